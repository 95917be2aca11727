package s3

import (
	"net/http"
	"sync"

	"github.com/aws/aws-sdk-go-v2/aws"
)

// requestCounts counts the HTTP requests a Storage sent, by kind:
// GET, PUT, HEAD, POST, DELETE, and LIST for a GET that lists objects
// or object versions.
type requestCounts struct {
	mu sync.Mutex
	n  map[string]int64
}

func (c *requestCounts) add(kind string) {
	c.mu.Lock()
	c.n[kind]++
	c.mu.Unlock()
}

// countingClient counts every request before sending it, retries and
// multipart parts included: what an object store bills.
type countingClient struct {
	next   aws.HTTPClient
	counts *requestCounts
}

func (c countingClient) Do(r *http.Request) (*http.Response, error) {
	kind := r.Method
	if kind == http.MethodGet && (r.URL.Query().Has("list-type") || r.URL.Query().Has("versions")) {
		kind = "LIST"
	}
	c.counts.add(kind)
	return c.next.Do(r)
}

// Requests returns how many HTTP requests of each kind (GET, PUT, HEAD,
// POST, DELETE, LIST) the storage has sent so far.
func (s *Storage) Requests() map[string]int64 {
	s.counts.mu.Lock()
	defer s.counts.mu.Unlock()
	out := make(map[string]int64, len(s.counts.n))
	for k, v := range s.counts.n {
		out[k] = v
	}
	return out
}
