//go:build browser

package server

import (
	"context"
	"flag"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/log"
	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/cdproto/page"
	"github.com/chromedp/cdproto/runtime"
	"github.com/chromedp/chromedp"
)

// screenshot, when set, is where TestDocsPage saves a PNG of the page
// (make docs-screenshot).
var screenshot = flag.String("screenshot", "", "save a PNG screenshot of /docs to this file")

// pageEvents is what the browser reports while the test drives the page.
type pageEvents struct {
	mu         sync.Mutex
	requests   []string // the URL of every request the page made
	exceptions []string // uncaught JavaScript exceptions
	logs       []string // the browser's own error messages, CSP violations among them
}

func (e *pageEvents) listen(ev any) {
	e.mu.Lock()
	defer e.mu.Unlock()
	switch ev := ev.(type) {
	case *network.EventRequestWillBeSent:
		e.requests = append(e.requests, ev.Request.URL)
	case *runtime.EventExceptionThrown:
		e.exceptions = append(e.exceptions, (&chromedp.ExceptionError{ExceptionDetails: ev.ExceptionDetails}).Error())
	case *log.EventEntryAdded:
		if ev.Entry.Level == log.EntryLevelError {
			e.logs = append(e.logs, string(ev.Entry.Source)+": "+ev.Entry.Text+" "+ev.Entry.URL)
		}
	}
}

// recordViolations is run in the page before its own scripts: it keeps
// every Content-Security-Policy violation where the test can read it.
const recordViolations = `window.cspViolations = [];
document.addEventListener("securitypolicyviolation", (e) => {
	window.cspViolations.push(e.effectiveDirective + " refused " + (e.blockedURI || "inline") + " at " + e.sourceFile + ":" + e.lineNumber);
});`

// TestDocsPage opens /docs in headless Chromium, on a server that needs a
// token: the page must list every operation of openapi.yaml, load nothing
// from another origin, break no rule of its Content-Security-Policy, and
// its "Try it out" must create a user, refused with 401 before the token
// is given to Authorize and 201 after.
func TestDocsPage(t *testing.T) {
	browser, err := exec.LookPath("chromium")
	if err != nil {
		t.Fatalf("chromium is not installed (%v): make test-docs installs it", err)
	}
	spec, err := loadOpenAPI()
	if err != nil {
		t.Fatal(err)
	}
	s, _ := newAuthServer(t)

	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	ctx, cancel = chromedp.NewExecAllocator(ctx,
		chromedp.ExecPath(browser),
		chromedp.Headless,
		chromedp.NoSandbox, // we run as root, in CI
		chromedp.DisableGPU,
		chromedp.NoFirstRun,
		chromedp.NoDefaultBrowserCheck,
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-dev-shm-usage", true),
		chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(1280, 900),
	)
	defer cancel()
	events := &pageEvents{}
	ctx, cancel = chromedp.NewContext(ctx, chromedp.WithListener(events.listen))
	defer cancel()

	if _, err := chromedp.Call(ctx, page.AddScriptToEvaluateOnNewDocument, page.AddScriptToEvaluateOnNewDocumentParams{Source: recordViolations}); err != nil {
		t.Fatalf("start chromium: %v", err)
	}
	const createUser = "#operations-users-createUser"
	if err := chromedp.Do(ctx,
		chromedp.Navigate(s.url+"/docs"),
		chromedp.WaitVisible(chromedp.CSS(createUser)),
	); err != nil {
		t.Fatalf("open /docs: %v", err)
	}

	t.Run("lists every operation", func(t *testing.T) {
		type operation struct{ Method, Path string }
		shown, err := chromedp.Run(ctx, chromedp.Evaluate[[]operation](`[...document.querySelectorAll(".opblock")].map((op) => ({
			Method: op.querySelector(".opblock-summary-method").textContent,
			Path: op.querySelector(".opblock-summary-path").dataset.path,
		}))`))
		if err != nil {
			t.Fatal(err)
		}
		var want []operation
		for path, item := range spec.doc.Paths.Map() {
			for method := range item.Operations() {
				want = append(want, operation{method, path})
			}
		}
		less := func(a, b operation) int { return strings.Compare(a.Path+" "+a.Method, b.Path+" "+b.Method) }
		slices.SortFunc(shown, less)
		slices.SortFunc(want, less)
		if !slices.Equal(shown, want) {
			t.Errorf("/docs shows the operations\n%v\nwant those of openapi.yaml\n%v", shown, want)
		}
	})

	t.Run("try it out creates a user with the token", func(t *testing.T) {
		status := chromedp.CSS(createUser + " .live-responses-table tbody .response-col_status")
		// The request body is the document's example: {"name": "alice"}.
		if err := chromedp.Do(ctx,
			chromedp.Click(chromedp.CSS(createUser+" .opblock-summary-control")),
			chromedp.Click(chromedp.CSS(createUser+" .try-out__btn")),
			chromedp.Click(chromedp.CSS(createUser+" .execute")),
			chromedp.WaitVisible(status),
		); err != nil {
			t.Fatalf("try POST /users: %v", err)
		}
		if got := text(t, ctx, status); got != "401" {
			t.Errorf("POST /users before Authorize: the page shows status %q, want 401", got)
		}

		if err := chromedp.Do(ctx,
			chromedp.Click(chromedp.CSS(".auth-wrapper .authorize")),
			chromedp.SendKeys(chromedp.CSS(".modal-ux .auth-container input"), tokenNew),
			chromedp.Click(chromedp.CSS(".modal-ux .auth-btn-wrapper .authorize")),
			chromedp.Click(chromedp.CSS(".modal-ux .btn-done")),
			chromedp.WaitNotPresent(chromedp.CSS(".modal-ux")),
			chromedp.Click(chromedp.CSS(createUser+" .execute")),
		); err != nil {
			t.Fatalf("authorize, then try POST /users again: %v", err)
		}
		if _, err := chromedp.Run(ctx, chromedp.Poll[bool](`document.querySelector("`+string(status)+`")?.textContent === "201"`,
			chromedp.WithPollingTimeout(30*time.Second))); err != nil {
			t.Errorf("POST /users after Authorize: the page shows status %q, want 201 (%v)", text(t, ctx, status), err)
		}
		body := text(t, ctx, chromedp.CSS(createUser+" .live-responses-table tbody .response-col_description pre"))
		if !strings.Contains(body, `"name": "alice"`) {
			t.Errorf("POST /users after Authorize: the page shows the body %q, want the user alice", body)
		}
		// The server agrees.
		r := s.as("Bearer " + tokenOld).get("/users?name=alice")
		if r.status != http.StatusOK || !strings.Contains(string(r.body), `"name":"alice"`) {
			t.Errorf("GET /users?name=alice after the page created her = %d %s", r.status, r.body)
		}
	})

	t.Run("keeps to its Content-Security-Policy", func(t *testing.T) {
		violations, err := chromedp.Run(ctx, chromedp.Evaluate[[]string](`window.cspViolations`))
		if err != nil {
			t.Fatal(err)
		}
		for _, v := range violations {
			t.Errorf("Content-Security-Policy violation: %s", v)
		}
		// The policy is in force, and the recorder sees what it refuses:
		// an inline style and an inline script are refused.
		if err := chromedp.Do(ctx, chromedp.Evaluate[chromedp.Void](`
			document.head.append(Object.assign(document.createElement("style"), {textContent: "body { color: red }"}));
			document.head.append(Object.assign(document.createElement("script"), {textContent: "window.inlineRan = true"}));
		`)); err != nil {
			t.Fatal(err)
		}
		n := len(violations)
		refused, err := chromedp.Run(ctx, chromedp.Poll[[]string](fmt.Sprintf(`window.cspViolations.length >= %d && window.cspViolations.slice(%d)`, n+2, n),
			chromedp.WithPollingTimeout(5*time.Second)))
		if err != nil || len(refused) != 2 || !strings.HasPrefix(refused[0], "style-src") || !strings.HasPrefix(refused[1], "script-src") {
			t.Errorf("an inline style and script added to the page: violations %q (%v), want style-src and script-src ones", refused, err)
		}
	})

	if *screenshot != "" {
		// Below the document's introduction: the Authorize button, locked
		// now, and every operation, the one just tried folded again.
		if err := chromedp.Do(ctx,
			chromedp.Click(chromedp.CSS(createUser+" .opblock-summary-control")),
			chromedp.WaitNotPresent(chromedp.CSS(createUser+" .execute")),
			chromedp.EmulateViewport(1280, 1000),
			chromedp.Evaluate[chromedp.Void](`document.activeElement.blur(); document.querySelector(".scheme-container").scrollIntoView()`),
		); err != nil {
			t.Fatal(err)
		}
		png, err := chromedp.Run(ctx, chromedp.CaptureScreenshot())
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(*screenshot, png, 0o644); err != nil {
			t.Fatal(err)
		}
	}

	events.mu.Lock()
	defer events.mu.Unlock()
	for _, e := range events.exceptions {
		t.Errorf("JavaScript exception: %s", e)
	}
	for _, l := range events.logs {
		t.Logf("browser log: %s", l)
	}
	origin, err := url.Parse(s.url)
	if err != nil {
		t.Fatal(err)
	}
	for _, raw := range events.requests {
		u, err := url.Parse(raw)
		if err == nil && u.Scheme == "data" {
			continue // an icon swagger-ui.css holds, not a request
		}
		if err != nil || u.Scheme != origin.Scheme || u.Host != origin.Host {
			t.Errorf("the page requested %.120s, which is not on the service's origin %s", raw, s.url)
		}
	}
	t.Logf("the page made %d requests, all to %s", len(events.requests), s.url)
}

// text returns the text of the first node sel matches, or "" when none does.
func text(t *testing.T, ctx context.Context, sel chromedp.CSS) string {
	t.Helper()
	got, err := chromedp.Run(ctx, chromedp.Evaluate[string](`document.querySelector("`+string(sel)+`")?.textContent ?? ""`))
	if err != nil {
		t.Fatalf("read %s: %v", sel, err)
	}
	return got
}
