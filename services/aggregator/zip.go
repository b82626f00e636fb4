package aggregator

import (
	"bytes"
	"compress/flate"
	"io"
	"sync"
)

// zipper deflates the packed summaries of final windows, which wait up to
// the longest view for the few merges that read them: a fifth smaller, at
// the cost of a deflate per window and an inflate per read. Its pools keep
// the large deflate state for reuse.
type zipper struct {
	writers sync.Pool // *flate.Writer
	readers sync.Pool // io.ReadCloser that is a flate.Resetter
}

// zip returns b deflated.
func (z *zipper) zip(b []byte) []byte {
	var buf bytes.Buffer
	w, _ := z.writers.Get().(*flate.Writer)
	if w == nil {
		w, _ = flate.NewWriter(&buf, flate.BestCompression) // constant level
	} else {
		w.Reset(&buf)
	}
	_, _ = w.Write(b) // writes to a bytes.Buffer cannot fail
	_ = w.Close()
	z.writers.Put(w)
	return bytes.Clone(buf.Bytes())
}

// unzip inflates what zip returned.
func (z *zipper) unzip(b []byte) ([]byte, error) {
	src := bytes.NewReader(b)
	r, _ := z.readers.Get().(io.ReadCloser)
	if r == nil {
		r = flate.NewReader(src)
	} else if err := r.(flate.Resetter).Reset(src, nil); err != nil {
		return nil, err
	}
	defer z.readers.Put(r)
	return io.ReadAll(r)
}
