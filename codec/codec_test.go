package codec

import (
	"bytes"
	"crypto/rand"
	"io"
	"testing"
)

func roundTrip(t *testing.T, c Codec, data []byte) []byte {
	t.Helper()
	var buf bytes.Buffer
	w, err := c.NewWriter(&buf)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write(data); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	r, err := c.NewReader(bytes.NewReader(buf.Bytes()))
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	got, err := io.ReadAll(r)
	if err != nil {
		t.Fatal(err)
	}
	return got
}

func TestRoundTrip(t *testing.T) {
	random := make([]byte, 1<<20)
	rand.Read(random)
	inputs := map[string][]byte{
		"empty":  {},
		"zeros":  make([]byte, 1<<20),
		"random": random,
		"text":   bytes.Repeat([]byte("INSERT INTO pgbench_history VALUES (1, 2, 3);\n"), 10000),
	}
	for _, c := range All() {
		for name, in := range inputs {
			t.Run(c.Name()+"/"+name, func(t *testing.T) {
				if got := roundTrip(t, c, in); !bytes.Equal(got, in) {
					t.Fatalf("round trip changed %d bytes into %d bytes", len(in), len(got))
				}
			})
		}
	}
}

func TestLookup(t *testing.T) {
	for _, c := range All() {
		got, err := ByName(c.Name())
		if err != nil || got.Name() != c.Name() {
			t.Fatalf("ByName(%q) = %v, %v", c.Name(), got.Name(), err)
		}
		base, sc := Split("wal/000000010000000000000001" + c.Ext())
		if base != "wal/000000010000000000000001" || sc.Name() != c.Name() {
			t.Fatalf("Split with %s: %q %s", c.Name(), base, sc.Name())
		}
	}
	if _, err := ByName("lz5"); err == nil {
		t.Fatal("ByName accepted an unknown codec")
	}
	if base, c := Split("wal/00000002.history"); base != "wal/00000002.history" || c.Name() != "none" {
		t.Fatalf("Split of an uncompressed history file: %q %s", base, c.Name())
	}
}

func TestCorruptInputFails(t *testing.T) {
	for _, c := range All() {
		if c.Name() == "none" {
			continue
		}
		r, err := c.NewReader(bytes.NewReader([]byte("this is not a compressed stream at all")))
		if err == nil {
			_, err = io.ReadAll(r)
		}
		if err == nil {
			t.Errorf("%s: garbage decoded without error", c.Name())
		}
	}
}
