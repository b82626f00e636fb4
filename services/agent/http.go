package agent

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/perfpipe/perfpipe/pkg/events"
)

// maxRedirects is how many redirects one http request follows.
const maxRedirects = 10

// httpRequest is the payload of the http kind.
type httpRequest struct {
	URL string `json:"url"`
	// Method defaults to GET.
	Method  string            `json:"method,omitempty"`
	Headers map[string]string `json:"headers,omitempty"`
	Body    string            `json:"body,omitempty"`
}

// httpOutput is the output of the http kind.
type httpOutput struct {
	Status int `json:"status"`
	// Size is the length of the body in bytes.
	Size int64 `json:"size"`
	// SHA256 is the hex SHA-256 of the body.
	SHA256 string `json:"sha256"`
	// LatencyMS is from sending the request to the end of the body.
	LatencyMS float64 `json:"latency_ms"`
}

// httpHandler makes HTTP requests to allowed hosts with one pooled client.
type httpHandler struct {
	client   *http.Client
	allowed  map[string]bool
	anyHost  bool
	hostList string
	maxBody  int64
}

func newHTTPHandler(cfg HTTPConfig) *httpHandler {
	h := &httpHandler{
		allowed:  make(map[string]bool),
		hostList: strings.Join(cfg.AllowedHosts, ", "),
		maxBody:  cfg.MaxBody,
	}
	for _, host := range cfg.AllowedHosts {
		h.anyHost = h.anyHost || host == "*"
		h.allowed[normalHost(host)] = true
	}

	transport := http.DefaultTransport.(*http.Transport).Clone()
	transport.MaxIdleConns = 4 * cfg.MaxIdleConnsPerHost
	transport.MaxIdleConnsPerHost = cfg.MaxIdleConnsPerHost
	transport.ResponseHeaderTimeout = cfg.Timeout
	h.client = &http.Client{
		Transport:     transport,
		Timeout:       cfg.Timeout,
		CheckRedirect: h.checkRedirect,
	}
	return h
}

// normalHost is host as the allow list compares it: lower case, without
// the brackets of an IPv6 literal.
func normalHost(host string) string {
	return strings.ToLower(strings.Trim(host, "[]"))
}

// checkHost refuses a URL whose host is not allowed, permanently.
func (h *httpHandler) checkHost(u *url.URL) error {
	if h.anyHost || h.allowed[normalHost(u.Hostname())] {
		return nil
	}
	return Permanentf("host %q not allowed (allowed: %s)", u.Hostname(), h.hostList)
}

// checkRedirect holds redirects to the same rules as the first request.
func (h *httpHandler) checkRedirect(req *http.Request, via []*http.Request) error {
	if len(via) >= maxRedirects {
		return Permanentf("stopped after %d redirects", maxRedirects)
	}
	return h.checkHost(req.URL)
}

// Handle implements Handler. Transport errors and the statuses that a
// later attempt may pass (see retryStatus) are transient; any other status
// is a success that the output reports.
func (h *httpHandler) Handle(
	ctx context.Context, req *events.WorkRequest,
) (events.Payload, error) {
	hreq, err := h.request(ctx, req.Payload)
	if err != nil {
		return nil, fmt.Errorf("http %s: %w", req.ID, err)
	}
	op := hreq.Method + " " + hreq.URL.Redacted()

	start := time.Now()
	resp, err := h.client.Do(hreq)
	if err != nil {
		return nil, fmt.Errorf("http %s: %w", op, err)
	}
	defer resp.Body.Close()

	// Stream the body into the hash; one byte past the limit tells a
	// body that is too long.
	sum := sha256.New()
	n, err := io.Copy(sum, io.LimitReader(resp.Body, h.maxBody+1))
	latency := time.Since(start)
	switch {
	case err != nil:
		return nil, fmt.Errorf("http %s: read body: %w", op, err)
	case retryStatus(resp.StatusCode):
		return nil, fmt.Errorf("http %s: status %d", op, resp.StatusCode)
	case n > h.maxBody:
		return nil, Permanentf("http %s: body over %d bytes", op, h.maxBody)
	}

	return json.Marshal(httpOutput{
		Status:    resp.StatusCode,
		Size:      n,
		SHA256:    hex.EncodeToString(sum.Sum(nil)),
		LatencyMS: float64(latency.Microseconds()) / 1000,
	})
}

// retryStatus reports whether a response status says that the same
// request may succeed later: 408, 429 and the 5xx statuses except 501 and
// 505, which say the server will never take it.
func retryStatus(code int) bool {
	switch code {
	case http.StatusRequestTimeout, http.StatusTooManyRequests:
		return true
	case http.StatusNotImplemented, http.StatusHTTPVersionNotSupported:
		return false
	}
	return code >= 500 && code <= 599
}

// request builds the HTTP request a payload describes. Its errors are
// permanent.
func (h *httpHandler) request(ctx context.Context, p events.Payload) (*http.Request, error) {
	var in httpRequest
	if err := decodePayload(p, &in); err != nil {
		return nil, err
	}
	if in.URL == "" {
		return nil, Permanentf("bad payload: no url")
	}
	u, err := url.Parse(in.URL)
	if err != nil {
		return nil, Permanent(err)
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return nil, Permanentf("url %s: scheme %q is not http or https", u.Redacted(), u.Scheme)
	}
	if err := h.checkHost(u); err != nil {
		return nil, err
	}

	method := strings.ToUpper(in.Method)
	if method == "" {
		method = http.MethodGet
	}
	var body io.Reader
	if in.Body != "" {
		body = strings.NewReader(in.Body)
	}
	hreq, err := http.NewRequestWithContext(ctx, method, u.String(), body)
	if err != nil {
		return nil, Permanent(err)
	}
	for k, v := range in.Headers {
		hreq.Header.Set(k, v)
	}
	return hreq, nil
}
