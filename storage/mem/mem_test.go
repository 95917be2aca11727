package mem_test

import (
	"bytes"
	"testing"

	"github.com/walship/walship/storage"
	"github.com/walship/walship/storage/mem"
	"github.com/walship/walship/storage/storagetest"
)

func TestConformance(t *testing.T) {
	storagetest.Run(t, func(t *testing.T) storage.Storage { return mem.New() })
}

func TestMetadataRules(t *testing.T) {
	s := mem.New()
	for _, meta := range []map[string]string{
		{"Walship-SHA256": "x"},
		{"walship sha": "x"},
		{"walship-note": "line\nbreak"},
		{"walship-note": " padded"},
	} {
		if err := s.Put(t.Context(), "k", bytes.NewReader(nil), 0, meta); err == nil || !storage.IsPermanent(err) {
			t.Errorf("Put with metadata %q: %v, want a permanent error", meta, err)
		}
	}
}
