package agent

import (
	"bufio"
	"context"
	"encoding/json"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/perfpipe/perfpipe/pkg/events"
)

// yearStats is what the test computes itself for one year of a price file.
type yearStats struct {
	rows      int64
	meanClose float64
	p95Volume float64
}

// priceYears reads a price file with plain code: per year (the first four
// characters of Date), the mean Close and the nearest-rank p95 Volume, the
// smallest volume with at least ceil(0.95*n) volumes <= it.
func priceYears(t *testing.T, path string) map[string]yearStats {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()

	closes := map[string][]float64{}
	volumes := map[string][]float64{}
	sc := bufio.NewScanner(f)
	sc.Scan() // header: Date,Open,High,Low,Close,Adj Close,Volume
	for sc.Scan() {
		fields := strings.Split(sc.Text(), ",")
		year := fields[0][:4]
		c, err1 := strconv.ParseFloat(fields[4], 64)
		v, err2 := strconv.ParseFloat(fields[6], 64)
		if err1 != nil || err2 != nil {
			t.Fatalf("%s: bad line %q", path, sc.Text())
		}
		closes[year] = append(closes[year], c)
		volumes[year] = append(volumes[year], v)
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}

	want := map[string]yearStats{}
	for year, cs := range closes {
		sum := 0.0
		for _, c := range cs {
			sum += c
		}
		vs := slices.Sorted(slices.Values(volumes[year]))
		rank := (95*len(vs) + 99) / 100 // ceil(0.95*n) in integers
		want[year] = yearStats{
			rows:      int64(len(cs)),
			meanClose: sum / float64(len(cs)),
			p95Volume: vs[rank-1],
		}
	}
	return want
}

func runCSV(t *testing.T, cfg CSVConfig, payload string) (*csvOutput, error) {
	t.Helper()
	h := newCSVHandler(Config{CSV: cfg}.withDefaults().CSV)
	req := &events.WorkRequest{ID: "c1", Kind: "csv", Payload: events.Payload(payload)}
	out, err := h.Handle(context.Background(), req)
	if err != nil {
		return nil, err
	}
	var got csvOutput
	if err := json.Unmarshal(out, &got); err != nil {
		t.Fatalf("output %s: %v", out, err)
	}
	return &got, nil
}

func closeEnough(got, want float64) bool {
	return got == want || math.Abs(got-want) <= 1e-9*math.Abs(want)
}

func TestCSVYearlyStats(t *testing.T) {
	files, err := filepath.Glob(priceDir + "/*.csv")
	if err != nil || len(files) == 0 {
		t.Fatalf("no price files in testdata: %v", err)
	}
	for _, path := range files {
		name := filepath.Base(path)
		t.Run(name, func(t *testing.T) {
			want := priceYears(t, path)
			payload := `{"file": "` + name + `", "group": "Date", "group_prefix": 4,
				"values": ["Close", "Volume"]}`

			got, err := runCSV(t, CSVConfig{DataDir: priceDir, ChunkRows: 100}, payload)
			if err != nil {
				t.Fatalf("Handle() error = %v", err)
			}
			if len(got.Groups) != len(want) {
				t.Fatalf("got %d groups, want %d", len(got.Groups), len(want))
			}
			var rows int64
			for i, g := range got.Groups {
				if i > 0 && got.Groups[i-1].Key >= g.Key {
					t.Errorf("group %q follows %q: not sorted", g.Key, got.Groups[i-1].Key)
				}
				w, ok := want[g.Key]
				if !ok {
					t.Fatalf("unexpected group %q", g.Key)
				}
				rows += g.Count
				if g.Count != w.rows {
					t.Errorf("%s count = %d, want %d", g.Key, g.Count, w.rows)
				}
				if c := g.Columns["Close"]; !closeEnough(c.Mean, w.meanClose) {
					t.Errorf("%s mean Close = %v, want %v", g.Key, c.Mean, w.meanClose)
				}
				v := g.Columns["Volume"]
				if v.P95 != w.p95Volume || v.QuantileValue != w.p95Volume {
					t.Errorf("%s p95 Volume = %v (quantile_value %v), want %v",
						g.Key, v.P95, v.QuantileValue, w.p95Volume)
				}
			}
			if got.Rows != rows || got.File != name {
				t.Errorf("file, rows = %s, %d; want %s, %d", got.File, got.Rows, name, rows)
			}
		})
	}
}

func TestCSVQuantileChoice(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, dir, "q.csv", "g,v\na,1\na,2\na,3\na,4\nb,10\n")

	got, err := runCSV(t, CSVConfig{DataDir: dir},
		`{"file": "q.csv", "group": "g", "values": ["v"], "quantile": 0.5}`)
	if err != nil {
		t.Fatalf("Handle() error = %v", err)
	}
	want := csvStats{Count: 4, Sum: 10, Mean: 2.5, Min: 1, Max: 4, P95: 4, Q: 0.5,
		QuantileValue: 2}
	if g := got.Groups[0]; g.Key != "a" || g.Columns["v"] != want {
		t.Errorf("group a = %+v, want key a and v = %+v", g, want)
	}
}

func TestCSVErrors(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, dir, "bad.csv", "Date,Close\n2001-01-02,1.5\n2001-01-03,x\n")
	writeFile(t, dir, "empty.csv", "")
	outside := t.TempDir()
	writeFile(t, outside, "secret.csv", "Date,Close\n2001-01-02,1\n")
	if err := os.Symlink(filepath.Join(outside, "secret.csv"),
		filepath.Join(dir, "link.csv")); err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name    string
		cfg     CSVConfig
		payload string
		want    string // in the error text
	}{
		{"dot dot", CSVConfig{DataDir: priceDir},
			`{"file": "../csv.go", "group": "Date", "values": ["Close"]}`, "escapes"},
		{"absolute", CSVConfig{DataDir: priceDir},
			`{"file": "/etc/passwd", "group": "Date", "values": ["Close"]}`, "/etc/passwd"},
		{"symlink out", CSVConfig{DataDir: dir},
			`{"file": "link.csv", "group": "Date", "values": ["Close"]}`, "escapes"},
		{"no data dir", CSVConfig{},
			`{"file": "AAPL.csv", "group": "Date", "values": ["Close"]}`, "no data dir"},
		{"missing file", CSVConfig{DataDir: priceDir},
			`{"file": "NOPE.csv", "group": "Date", "values": ["Close"]}`, "NOPE.csv"},
		{"bad column", CSVConfig{DataDir: priceDir},
			`{"file": "AAPL.csv", "group": "Date", "values": ["Closing"]}`,
			`no column "Closing"`},
		{"bad group column", CSVConfig{DataDir: priceDir},
			`{"file": "AAPL.csv", "group": "Day", "values": ["Close"]}`, `no column "Day"`},
		{"bad number", CSVConfig{DataDir: dir},
			`{"file": "bad.csv", "group": "Date", "values": ["Close"]}`,
			`row 3 column "Close": bad number "x"`},
		{"empty file", CSVConfig{DataDir: dir},
			`{"file": "empty.csv", "group": "Date", "values": ["Close"]}`, "empty file"},
		{"too many groups", CSVConfig{DataDir: priceDir, MaxGroups: 5},
			`{"file": "AAPL.csv", "group": "Date", "values": ["Close"]}`, "more than 5 groups"},
		{"no values", CSVConfig{DataDir: priceDir},
			`{"file": "AAPL.csv", "group": "Date", "values": []}`, "no value columns"},
		{"bad quantile", CSVConfig{DataDir: priceDir},
			`{"file": "AAPL.csv", "group": "Date", "values": ["Close"], "quantile": 2}`,
			"quantile 2"},
		{"unknown field", CSVConfig{DataDir: priceDir},
			`{"file": "AAPL.csv", "group": "Date", "value": ["Close"]}`, "bad payload"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := runCSV(t, tt.cfg, tt.payload)
			if err == nil {
				t.Fatalf("Handle() error = nil, want one with %q", tt.want)
			}
			if !IsPermanent(err) {
				t.Errorf("IsPermanent(%v) = false, want true", err)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("Handle() error = %q, want it to contain %q", err, tt.want)
			}
		})
	}
}

func TestPrefix(t *testing.T) {
	tests := []struct {
		s    string
		n    int
		want string
	}{
		{"2004-11-18", 4, "2004"},
		{"2004", 10, "2004"},
		{"été", 2, "ét"},
		{"", 3, ""},
	}
	for _, tt := range tests {
		if got := prefix(tt.s, tt.n); got != tt.want {
			t.Errorf("prefix(%q, %d) = %q, want %q", tt.s, tt.n, got, tt.want)
		}
	}
}

func writeFile(t testing.TB, dir, name, content string) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

const priceDir = "../../testdata/prices"
