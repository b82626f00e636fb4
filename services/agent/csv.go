package agent

import (
	"bufio"
	"context"
	"encoding/csv"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"slices"
	"strconv"
	"strings"

	"github.com/perfpipe/perfpipe/internal/quantile"
	"github.com/perfpipe/perfpipe/pkg/events"
)

// defaultCSVQuantile is the quantile a csv request gets when it names none.
const defaultCSVQuantile = 0.95

// csvRequest is the payload of the csv kind.
type csvRequest struct {
	// File is a path inside CSVConfig.DataDir.
	File string `json:"file"`
	// Group is the column whose values form the groups.
	Group string `json:"group"`
	// GroupPrefix, when above zero, keeps only the first GroupPrefix
	// characters of a group value: 4 groups ISO dates by year.
	GroupPrefix int `json:"group_prefix,omitempty"`
	// Values are the numeric columns summarised per group.
	Values []string `json:"values"`
	// Quantile is reported per column as quantile_value, in (0, 1].
	// Zero means 0.95.
	Quantile float64 `json:"quantile,omitempty"`
}

// csvOutput is the output of the csv kind, with groups sorted by key.
type csvOutput struct {
	File   string     `json:"file"`
	Rows   int64      `json:"rows"`
	Groups []csvGroup `json:"groups"`
}

// csvGroup is one group of rows.
type csvGroup struct {
	Key     string              `json:"key"`
	Count   int64               `json:"count"`
	Columns map[string]csvStats `json:"columns"`
}

// csvStats summarise one value column of a group. P95 is always the 0.95
// quantile; Q echoes the requested quantile and QuantileValue is its value
// (equal to P95 by default). Quantiles are nearest-rank, exact up to 1000
// values per group and within 1% beyond.
type csvStats struct {
	Count         int64   `json:"count"`
	Sum           float64 `json:"sum"`
	Mean          float64 `json:"mean"`
	Min           float64 `json:"min"`
	Max           float64 `json:"max"`
	P95           float64 `json:"p95"`
	Q             float64 `json:"q"`
	QuantileValue float64 `json:"quantile_value"`
}

// csvHandler computes per-group statistics of a CSV file in one streaming
// pass. Memory grows with the number of groups, not with the file.
type csvHandler struct {
	cfg CSVConfig
}

func newCSVHandler(cfg CSVConfig) *csvHandler {
	return &csvHandler{cfg: cfg}
}

// Handle implements Handler. Every failure but cancellation is permanent:
// the same file and request fail the same way again.
func (h *csvHandler) Handle(ctx context.Context, req *events.WorkRequest) (events.Payload, error) {
	in, err := parseCSVRequest(req.Payload)
	if err != nil {
		return nil, fmt.Errorf("csv %s: %w", req.ID, err)
	}
	f, err := h.open(in.File)
	if err != nil {
		return nil, err
	}
	defer f.Close()

	out, err := h.summarise(ctx, f, in)
	if err != nil {
		return nil, err
	}
	return json.Marshal(out)
}

func parseCSVRequest(p events.Payload) (*csvRequest, error) {
	var in csvRequest
	if err := decodePayload(p, &in); err != nil {
		return nil, err
	}
	if in.Quantile == 0 {
		in.Quantile = defaultCSVQuantile
	}
	switch {
	case in.File == "":
		return nil, Permanentf("bad payload: no file")
	case in.Group == "":
		return nil, Permanentf("bad payload: no group column")
	case len(in.Values) == 0:
		return nil, Permanentf("bad payload: no value columns")
	case in.GroupPrefix < 0:
		return nil, Permanentf("bad payload: negative group_prefix %d", in.GroupPrefix)
	case in.Quantile < 0 || in.Quantile > 1:
		return nil, Permanentf("bad payload: quantile %v outside (0, 1]", in.Quantile)
	}
	return &in, nil
}

// open opens name inside the data folder; os.Root refuses a path that
// leaves it, through ".." or a symbolic link.
func (h *csvHandler) open(name string) (*os.File, error) {
	if h.cfg.DataDir == "" {
		return nil, Permanentf("csv %s: no data dir configured", name)
	}
	root, err := os.OpenRoot(h.cfg.DataDir)
	if err != nil {
		return nil, Permanentf("csv data dir: %w", err)
	}
	defer root.Close()
	f, err := root.Open(name)
	if err != nil {
		return nil, Permanentf("csv %s: %w", name, err)
	}
	return f, nil
}

// summarise reads the CSV stream r, checking ctx every ChunkRows rows.
func (h *csvHandler) summarise(
	ctx context.Context, r io.Reader, in *csvRequest,
) (*csvOutput, error) {
	cr := csv.NewReader(bufio.NewReaderSize(r, 64<<10))
	cr.ReuseRecord = true
	header, err := cr.Read()
	if errors.Is(err, io.EOF) {
		return nil, Permanentf("csv %s: empty file", in.File)
	}
	if err != nil {
		return nil, Permanentf("csv %s: %w", in.File, err)
	}
	agg, err := newCSVAgg(in, header, h.cfg.MaxGroups)
	if err != nil {
		return nil, err
	}

	for {
		rec, err := cr.Read()
		if errors.Is(err, io.EOF) {
			return agg.output(), nil
		}
		if err != nil {
			return nil, Permanentf("csv %s: %w", in.File, err)
		}
		if err := agg.add(cr, rec); err != nil {
			return nil, err
		}
		if agg.rows%int64(h.cfg.ChunkRows) == 0 && ctx.Err() != nil {
			return nil, fmt.Errorf("csv %s: %w", in.File, ctx.Err())
		}
	}
}

// csvAgg is the state of one streaming group-by.
type csvAgg struct {
	in        *csvRequest
	groupCol  int
	valueCols []int
	maxGroups int

	rows   int64
	groups map[string]*groupAgg
}

// groupAgg holds one group's row count and a summary per value column.
type groupAgg struct {
	count int64
	cols  []quantile.Summary
}

func newCSVAgg(in *csvRequest, header []string, maxGroups int) (*csvAgg, error) {
	column := func(name string) (int, error) {
		i := slices.Index(header, name)
		if i < 0 {
			return 0, Permanentf("csv %s: row 1: no column %q (columns: %s)",
				in.File, name, strings.Join(header, ", "))
		}
		return i, nil
	}
	a := &csvAgg{in: in, maxGroups: maxGroups, groups: make(map[string]*groupAgg)}
	var err error
	if a.groupCol, err = column(in.Group); err != nil {
		return nil, err
	}
	for _, name := range in.Values {
		i, err := column(name)
		if err != nil {
			return nil, err
		}
		a.valueCols = append(a.valueCols, i)
	}
	return a, nil
}

// add counts one record. Rows are numbered as lines of the file, the
// header being row 1.
func (a *csvAgg) add(cr *csv.Reader, rec []string) error {
	a.rows++
	g, err := a.group(rec[a.groupCol])
	if err != nil {
		return err
	}
	g.count++
	for i, col := range a.valueCols {
		v, err := strconv.ParseFloat(rec[col], 64)
		if err == nil {
			err = g.cols[i].Add(v)
		}
		if err != nil {
			line, _ := cr.FieldPos(col)
			return Permanentf("csv %s: row %d column %q: bad number %q",
				a.in.File, line, a.in.Values[i], rec[col])
		}
	}
	return nil
}

// group returns the group of a group-column value, making it if new.
func (a *csvAgg) group(value string) (*groupAgg, error) {
	key := value
	if a.in.GroupPrefix > 0 {
		key = prefix(value, a.in.GroupPrefix)
	}
	if g, ok := a.groups[key]; ok {
		return g, nil
	}
	if len(a.groups) >= a.maxGroups {
		return nil, Permanentf("csv %s: more than %d groups", a.in.File, a.maxGroups)
	}
	g := &groupAgg{cols: make([]quantile.Summary, len(a.valueCols))}
	// The record's memory is reused; the key must not pin it.
	a.groups[strings.Clone(key)] = g
	return g, nil
}

// prefix is the first n characters of s, or s when shorter.
func prefix(s string, n int) string {
	for i := range s {
		if n == 0 {
			return s[:i]
		}
		n--
	}
	return s
}

// output returns the groups sorted by key.
func (a *csvAgg) output() *csvOutput {
	out := &csvOutput{File: a.in.File, Rows: a.rows, Groups: make([]csvGroup, 0, len(a.groups))}
	for _, key := range slices.Sorted(maps.Keys(a.groups)) {
		g := a.groups[key]
		cg := csvGroup{Key: key, Count: g.count, Columns: make(map[string]csvStats)}
		for i, name := range a.in.Values {
			cg.Columns[name] = stats(&g.cols[i], a.in.Quantile)
		}
		out.Groups = append(out.Groups, cg)
	}
	return out
}

func stats(s *quantile.Summary, q float64) csvStats {
	return csvStats{
		Count:         s.Count(),
		Sum:           s.Sum(),
		Mean:          s.Mean(),
		Min:           s.Min(),
		Max:           s.Max(),
		P95:           s.Quantile(0.95),
		Q:             q,
		QuantileValue: s.Quantile(q),
	}
}
