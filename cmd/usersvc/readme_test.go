package main

import (
	"os"
	"strings"
	"testing"

	"usersvc/internal/config"
)

// operationsSection returns the README's Operations section.
func operationsSection(t *testing.T) string {
	t.Helper()
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, section, ok := strings.Cut(string(readme), "\n## Operations\n")
	if !ok {
		t.Fatal("README.md has no Operations section")
	}
	if end := strings.Index(section, "\n## "); end >= 0 {
		section = section[:end]
	}
	return section
}

// TestREADMEDocumentsOperations checks that the Operations section names
// every variable the configuration reads, every metric family /metrics
// serves (checkMetrics checks the other way), and every operator endpoint.
func TestREADMEDocumentsOperations(t *testing.T) {
	doc := operationsSection(t)
	var names []string
	names = append(names, config.Variables()...)
	names = append(names, documentedMetrics...)
	names = append(names, "GET /healthz", "GET /readyz", "GET /metrics", "X-Request-ID")
	for _, name := range names {
		if !strings.Contains(doc, "`"+name+"`") && !strings.Contains(doc, "`"+name+" ") {
			t.Errorf("README's Operations section does not document `%s`", name)
		}
	}
}

// checkLogFieldsDocumented fails the test unless the Operations section
// names every field of rec as `field`.
func checkLogFieldsDocumented(t *testing.T, rec map[string]any) {
	t.Helper()
	doc := operationsSection(t)
	for field := range rec {
		if !strings.Contains(doc, "`"+field+"`") {
			t.Errorf("log line %q has field %s, which README's Operations section does not document", rec["msg"], field)
		}
	}
}
