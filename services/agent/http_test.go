package agent

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/perfpipe/perfpipe/pkg/events"
)

// testSite serves the pages the http tests ask for.
func testSite(t *testing.T) *httptest.Server {
	t.Helper()
	mux := http.NewServeMux()
	mux.HandleFunc("/hello", func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "hello, world\n")
	})
	mux.HandleFunc("/echo", func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		io.WriteString(w, r.Method+" "+r.Header.Get("X-Test")+" "+string(body))
	})
	mux.HandleFunc("/missing", func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "nope", http.StatusNotFound)
	})
	mux.HandleFunc("/busy", func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "busy", http.StatusServiceUnavailable)
	})
	mux.HandleFunc("/slow-down", func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "slow down", http.StatusTooManyRequests)
	})
	mux.HandleFunc("/big", func(w http.ResponseWriter, r *http.Request) {
		w.Write(make([]byte, 2048))
	})
	mux.HandleFunc("/away", func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, "http://example.com/", http.StatusFound)
	})
	mux.HandleFunc("/home", func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, "/hello", http.StatusFound)
	})
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return srv
}

func sha(s string) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:])
}

func TestRetryStatus(t *testing.T) {
	tests := []struct {
		code int
		want bool
	}{
		{200, false}, {302, false}, {400, false}, {404, false}, {408, true}, {429, true},
		{500, true}, {501, false}, {502, true}, {503, true}, {504, true}, {505, false},
		{599, true}, {600, false},
	}
	for _, tt := range tests {
		if got := retryStatus(tt.code); got != tt.want {
			t.Errorf("retryStatus(%d) = %v, want %v", tt.code, got, tt.want)
		}
	}
}

func TestHTTPHandler(t *testing.T) {
	srv := testSite(t)
	localhostURL := strings.Replace(srv.URL, "127.0.0.1", "localhost", 1)

	type want struct {
		status    int
		body      string // hashed and measured
		err       string // in the error text; empty for success
		permanent bool
	}
	tests := []struct {
		name    string
		hosts   []string
		payload string
		want    want
	}{
		{"get", nil, `{"url": "` + srv.URL + `/hello"}`,
			want{status: 200, body: "hello, world\n"}},
		{"post with headers", nil, `{"url": "` + srv.URL + `/echo", "method": "post",
			"headers": {"X-Test": "yes"}, "body": "data"}`,
			want{status: 200, body: "POST yes data"}},
		{"not found is a result", nil, `{"url": "` + srv.URL + `/missing"}`,
			want{status: 404, body: "nope\n"}},
		{"redirect within allowed", nil, `{"url": "` + srv.URL + `/home"}`,
			want{status: 200, body: "hello, world\n"}},
		{"localhost allowed", nil, `{"url": "` + localhostURL + `/hello"}`,
			want{status: 200, body: "hello, world\n"}},
		{"any host", []string{"*"}, `{"url": "` + srv.URL + `/hello"}`,
			want{status: 200, body: "hello, world\n"}},
		{"503 is transient", nil, `{"url": "` + srv.URL + `/busy"}`,
			want{err: "status 503"}},
		{"429 is transient", nil, `{"url": "` + srv.URL + `/slow-down"}`,
			want{err: "status 429"}},
		{"refused connection is transient", nil, `{"url": "http://127.0.0.1:1/"}`,
			want{err: "connect"}},
		{"host not allowed", nil, `{"url": "http://example.com/"}`,
			want{err: `host "example.com" not allowed`, permanent: true}},
		{"ip not in list", []string{"localhost"}, `{"url": "` + srv.URL + `/hello"}`,
			want{err: `host "127.0.0.1" not allowed`, permanent: true}},
		{"redirect out", nil, `{"url": "` + srv.URL + `/away"}`,
			want{err: `host "example.com" not allowed`, permanent: true}},
		{"body too long", nil, `{"url": "` + srv.URL + `/big"}`,
			want{err: "body over 1024 bytes", permanent: true}},
		{"bad scheme", nil, `{"url": "file:///etc/passwd"}`,
			want{err: `scheme "file"`, permanent: true}},
		{"no url", nil, `{"method": "GET"}`, want{err: "no url", permanent: true}},
		{"bad method", nil, `{"url": "` + srv.URL + `/hello", "method": "G T"}`,
			want{err: "invalid method", permanent: true}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHTTPHandler(Config{HTTP: HTTPConfig{AllowedHosts: tt.hosts, MaxBody: 1024}}.
				withDefaults().HTTP)
			req := &events.WorkRequest{ID: "h1", Kind: "http", Payload: events.Payload(tt.payload)}

			out, err := h.Handle(context.Background(), req)
			if tt.want.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.want.err) {
					t.Fatalf("Handle() error = %v, want one with %q", err, tt.want.err)
				}
				if got := IsPermanent(err); got != tt.want.permanent {
					t.Errorf("IsPermanent(%v) = %v, want %v", err, got, tt.want.permanent)
				}
				return
			}
			if err != nil {
				t.Fatalf("Handle() error = %v", err)
			}
			var got httpOutput
			if err := json.Unmarshal(out, &got); err != nil {
				t.Fatalf("output %s: %v", out, err)
			}
			if got.Status != tt.want.status || got.Size != int64(len(tt.want.body)) ||
				got.SHA256 != sha(tt.want.body) {
				t.Errorf("output = %+v, want status %d, size %d, sha256 %s",
					got, tt.want.status, len(tt.want.body), sha(tt.want.body))
			}
			if got.LatencyMS <= 0 {
				t.Errorf("latency_ms = %v, want > 0", got.LatencyMS)
			}
		})
	}
}
