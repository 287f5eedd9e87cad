package main

import (
	"os"
	"strings"
	"testing"

	"usersvc/internal/config"
)

// operationsSection returns docs/operations.md, the operators' page.
func operationsSection(t *testing.T) string {
	t.Helper()
	doc, err := os.ReadFile("../../docs/operations.md")
	if err != nil {
		t.Fatal(err)
	}
	return string(doc)
}

// TestREADMEDocumentsOperations checks that docs/operations.md names
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
			t.Errorf("docs/operations.md does not document `%s`", name)
		}
	}
}

// checkLogFieldsDocumented fails the test unless docs/operations.md names
// every field of rec as `field`.
func checkLogFieldsDocumented(t *testing.T, rec map[string]any) {
	t.Helper()
	doc := operationsSection(t)
	for field := range rec {
		if !strings.Contains(doc, "`"+field+"`") {
			t.Errorf("log line %q has field %s, which docs/operations.md does not document", rec["msg"], field)
		}
	}
}
