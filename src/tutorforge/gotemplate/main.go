// Renders an Ollama TEMPLATE with Go's own text/template, as Ollama does.
// stdin: {"template": "...", "data": {"System": "...", "Prompt": "...", "Messages": [{"Role": "...", "Content": "..."}]}}
// stdout: the rendered text, byte for byte.
package main

import (
	"encoding/json"
	"os"
	"text/template"
)

type Message struct {
	Role    string
	Content string
}

type Data struct {
	System   string
	Prompt   string
	Response string
	Messages []Message
}

func main() {
	var in struct {
		Template string
		Data     Data
	}
	if err := json.NewDecoder(os.Stdin).Decode(&in); err != nil {
		os.Stderr.WriteString("bad input: " + err.Error())
		os.Exit(2)
	}
	t, err := template.New("ollama").Parse(in.Template)
	if err != nil {
		os.Stderr.WriteString("parse: " + err.Error())
		os.Exit(1)
	}
	if err := t.Execute(os.Stdout, in.Data); err != nil {
		os.Stderr.WriteString("execute: " + err.Error())
		os.Exit(1)
	}
}
