package crypt_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"filippo.io/age"

	"github.com/walship/walship/storage"
	"github.com/walship/walship/storage/crypt"
	"github.com/walship/walship/storage/mem"
	"github.com/walship/walship/storage/storagetest"
)

func newIdentity(t *testing.T) *age.X25519Identity {
	t.Helper()
	id, err := age.GenerateX25519Identity()
	if err != nil {
		t.Fatal(err)
	}
	return id
}

func keysFor(ids ...*age.X25519Identity) crypt.Keys {
	var k crypt.Keys
	for _, id := range ids {
		k.Recipients = append(k.Recipients, id.Recipient())
		k.Identities = append(k.Identities, id)
	}
	return k
}

func TestConformance(t *testing.T) {
	id := newIdentity(t)
	storagetest.Run(t, func(t *testing.T) storage.Storage {
		return encrypted{crypt.Wrap(mem.New(), keysFor(id))}
	})
}

// encrypted tells the conformance suite that stored sizes are ciphertext
// sizes and that the envelope is metadata of its own.
type encrypted struct{ storage.Storage }

func (encrypted) AddedMetadata() []string { return []string{crypt.MetaEnvelope} }

// rawGet reads what the wrapped store holds, bypassing decryption.
func rawGet(t *testing.T, s storage.Storage, key string) ([]byte, storage.ObjectInfo) {
	t.Helper()
	rc, info, err := s.Get(t.Context(), key)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	b, err := io.ReadAll(rc)
	if err != nil {
		t.Fatal(err)
	}
	return b, info
}

func get(s storage.Storage, key string) ([]byte, error) {
	rc, _, err := s.Get(context.Background(), key)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	return io.ReadAll(rc)
}

func marked(n int) []byte {
	b := bytes.Repeat([]byte("MARKER-ROW-42 "), n/14+1)
	return b[:n]
}

func TestRoundTripHidesContent(t *testing.T) {
	raw := mem.New()
	s := crypt.Wrap(raw, keysFor(newIdentity(t)))
	ctx := t.Context()
	for _, size := range []int{0, 1, 64 << 10, 64<<10 + 1, storage.SpillLimit + 12345} {
		data := marked(size)
		key := "wal/put-" + strings.Repeat("x", size%7)
		key = key + "-" + string(rune('a'+size%26))
		if err := s.Put(ctx, key, bytes.NewReader(data), int64(len(data)), map[string]string{"walship-size": "1"}); err != nil {
			t.Fatal(err)
		}
		got, err := get(s, key)
		if err != nil || !bytes.Equal(got, data) {
			t.Fatalf("size %d: round trip: %v (equal %v)", size, err, bytes.Equal(got, data))
		}
		stored, info := rawGet(t, raw, key)
		if info.Metadata[crypt.MetaEnvelope] != crypt.EnvelopeAge || info.Metadata["walship-size"] != "1" {
			t.Errorf("metadata %v: want the envelope and the caller's keys", info.Metadata)
		}
		if size > 0 && bytes.Contains(stored, []byte("MARKER-ROW")) {
			t.Errorf("size %d: stored bytes contain the plaintext", size)
		}

		skey := key + ".stream"
		n, err := s.PutStream(ctx, skey, bytes.NewReader(data), nil)
		if err != nil {
			t.Fatal(err)
		}
		stored, _ = rawGet(t, raw, skey)
		if n != int64(len(stored)) {
			t.Errorf("PutStream returned %d, stored %d", n, len(stored))
		}
		if got, err := get(s, skey); err != nil || !bytes.Equal(got, data) {
			t.Fatalf("size %d: stream round trip: %v", size, err)
		}
	}
}

func TestStreamErrorPassesThrough(t *testing.T) {
	s := crypt.Wrap(mem.New(), keysFor(newIdentity(t)))
	boom := errors.New("source failed")
	r := io.MultiReader(bytes.NewReader(marked(100000)), iotestErr{boom})
	if _, err := s.PutStream(t.Context(), "k", r, nil); !errors.Is(err, boom) {
		t.Fatalf("PutStream: %v, want the reader's error", err)
	}
	if _, err := s.Stat(t.Context(), "k"); !errors.Is(err, storage.ErrNotExist) {
		t.Fatalf("a failed stream left an object: %v", err)
	}
}

type iotestErr struct{ err error }

func (e iotestErr) Read([]byte) (int, error) { return 0, e.err }

func TestMixedArchiveAndPlainKeys(t *testing.T) {
	raw := mem.New()
	ctx := t.Context()
	plain := crypt.Wrap(raw, crypt.Keys{})
	if err := plain.Put(ctx, "old", bytes.NewReader([]byte("old plain")), 9, nil); err != nil {
		t.Fatal(err)
	}
	k := keysFor(newIdentity(t))
	k.Plain = func(key string) bool { return key == "cluster.json" }
	s := crypt.Wrap(raw, k)
	for key, data := range map[string]string{"new": "new secret", "cluster.json": "identity"} {
		if err := s.Put(ctx, key, strings.NewReader(data), int64(len(data)), nil); err != nil {
			t.Fatal(err)
		}
	}
	for key, want := range map[string]string{"old": "old plain", "new": "new secret", "cluster.json": "identity"} {
		if got, err := get(s, key); err != nil || string(got) != want {
			t.Errorf("%s: %q, %v", key, got, err)
		}
	}
	if b, _ := rawGet(t, raw, "cluster.json"); string(b) != "identity" {
		t.Errorf("a plain key was encrypted")
	}
	// A host without the identity reads plain objects and is told what
	// is missing for encrypted ones.
	if got, err := get(plain, "cluster.json"); err != nil || string(got) != "identity" {
		t.Errorf("plain read: %q %v", got, err)
	}
	_, err := get(plain, "new")
	if err == nil || !storage.IsPermanent(err) || !strings.Contains(err.Error(), "--decrypt-identity-file") {
		t.Errorf("encrypted object without a key: %v, want a permanent error naming the setting", err)
	}
}

func TestRecipientOnlyCannotRead(t *testing.T) {
	id := newIdentity(t)
	raw := mem.New()
	pusher := crypt.Wrap(raw, crypt.Keys{Recipients: []age.Recipient{id.Recipient()}})
	if err := pusher.Put(t.Context(), "k", strings.NewReader("secret"), 6, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := get(pusher, "k"); err == nil {
		t.Fatal("a host holding only the public key decrypted an object")
	}
	other := crypt.Wrap(raw, keysFor(newIdentity(t)))
	_, err := get(other, "k")
	if err == nil || !storage.IsPermanent(err) || !strings.Contains(err.Error(), "other keys") {
		t.Errorf("wrong identity: %v", err)
	}
	if got, err := get(crypt.Wrap(raw, keysFor(id)), "k"); err != nil || string(got) != "secret" {
		t.Errorf("right identity: %q %v", got, err)
	}
}

func TestRotation(t *testing.T) {
	oldID, newID := newIdentity(t), newIdentity(t)
	raw := mem.New()
	ctx := t.Context()
	if err := crypt.Wrap(raw, keysFor(oldID)).Put(ctx, "a", strings.NewReader("one"), 3, nil); err != nil {
		t.Fatal(err)
	}
	if err := crypt.Wrap(raw, keysFor(newID)).Put(ctx, "b", strings.NewReader("two"), 3, nil); err != nil {
		t.Fatal(err)
	}
	both := crypt.Wrap(raw, crypt.Keys{Identities: []age.Identity{newID, oldID}})
	for key, want := range map[string]string{"a": "one", "b": "two"} {
		if got, err := get(both, key); err != nil || string(got) != want {
			t.Errorf("%s after rotation: %q %v", key, got, err)
		}
	}
}

func TestTamperingIsCorruption(t *testing.T) {
	id := newIdentity(t)
	raw := mem.New()
	s := crypt.Wrap(raw, keysFor(id))
	data := marked(200000)
	if err := s.Put(t.Context(), "k", bytes.NewReader(data), int64(len(data)), nil); err != nil {
		t.Fatal(err)
	}
	stored, info := rawGet(t, raw, "k")
	mac := bytes.Index(stored, []byte("\n--- ")) + 8
	for name, at := range map[string]int{"header": mac, "payload": len(stored) / 2, "last chunk": len(stored) - 3} {
		bad := append([]byte(nil), stored...)
		bad[at] ^= 0x20
		key := "bad-" + strings.ReplaceAll(name, " ", "-")
		if err := raw.Put(t.Context(), key, bytes.NewReader(bad), int64(len(bad)), info.Metadata); err != nil {
			t.Fatal(err)
		}
		got, err := get(s, key)
		if !errors.Is(err, storage.ErrCorrupt) {
			t.Errorf("%s flipped: %v (%d bytes returned), want ErrCorrupt", name, err, len(got))
		}
	}
	cut := stored[:len(stored)-100]
	if err := raw.Put(t.Context(), "cut", bytes.NewReader(cut), int64(len(cut)), info.Metadata); err != nil {
		t.Fatal(err)
	}
	if _, err := get(s, "cut"); !errors.Is(err, storage.ErrCorrupt) {
		t.Errorf("truncated: %v, want ErrCorrupt", err)
	}
}

func TestPassphrase(t *testing.T) {
	raw := mem.New()
	env := map[string]string{crypt.EnvPassphrase: "correct horse battery staple"}
	k, err := crypt.Load(crypt.Sources{Encrypt: true, Getenv: func(k string) string { return env[k] }})
	if err != nil {
		t.Fatal(err)
	}
	s := crypt.Wrap(raw, k)
	if err := s.Put(t.Context(), "k", strings.NewReader("secret"), 6, nil); err != nil {
		t.Fatal(err)
	}
	if got, err := get(s, "k"); err != nil || string(got) != "secret" {
		t.Fatalf("passphrase round trip: %q %v", got, err)
	}
	env[crypt.EnvPassphrase] = "wrong"
	k, err = crypt.Load(crypt.Sources{Getenv: func(k string) string { return env[k] }})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := get(crypt.Wrap(raw, k), "k"); err == nil {
		t.Fatal("a wrong passphrase decrypted")
	}
}

func writeFile(t *testing.T, dir, name, text string, mode os.FileMode) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(text), mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(p, mode); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestLoadAndGenerate(t *testing.T) {
	dir := t.TempDir()
	keyFile := filepath.Join(dir, "key.txt")
	pub, err := crypt.Generate(keyFile)
	if err != nil {
		t.Fatal(err)
	}
	if st, _ := os.Stat(keyFile); st.Mode().Perm() != 0o600 {
		t.Errorf("key file mode %v, want 0600", st.Mode().Perm())
	}
	if _, err := crypt.Generate(keyFile); err == nil || !strings.Contains(err.Error(), "never overwrites") {
		t.Errorf("second keygen to the same file: %v", err)
	}
	pubs, err := crypt.PublicKeys(keyFile)
	if err != nil || len(pubs) != 1 || pubs[0] != pub {
		t.Fatalf("PublicKeys: %v %v, want [%s]", pubs, err, pub)
	}
	noEnv := func(string) string { return "" }

	// One key file on every host: encrypts to its own public key.
	k, err := crypt.Load(crypt.Sources{Encrypt: true, IdentityFile: keyFile, Getenv: noEnv})
	if err != nil || len(k.Recipients) != 1 || len(k.Identities) != 1 {
		t.Fatalf("identity file with --encrypt: %+v %v", k, err)
	}
	// A pushing host holds only the public key.
	recFile := writeFile(t, dir, "recipients.txt", "# pushers\n"+pub+"\n", 0o644)
	for _, encrypt := range []bool{true, false} { // public keys imply --encrypt
		k, err = crypt.Load(crypt.Sources{Encrypt: encrypt, RecipientsFile: recFile, Getenv: noEnv})
		if err != nil || len(k.Recipients) != 1 || len(k.Identities) != 0 {
			t.Fatalf("recipients file (--encrypt %v): %+v %v", encrypt, k, err)
		}
	}
	// A key file alone decrypts but does not encrypt.
	k, err = crypt.Load(crypt.Sources{IdentityFile: keyFile, Getenv: noEnv})
	if err != nil || len(k.Recipients) != 0 || len(k.Identities) != 1 {
		t.Fatalf("identity file without --encrypt: %+v %v", k, err)
	}

	secret := "AGE-SECRET-KEY-1QQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQ"
	badKey := writeFile(t, dir, "bad.txt", secret+"\n", 0o600)
	worldKey := writeFile(t, dir, "world.txt", "x\n", 0o644)
	emptyPass := writeFile(t, dir, "pass.txt", "\nsecond\n", 0o600)
	for _, c := range []struct {
		name string
		src  crypt.Sources
		env  map[string]string
		want string
	}{
		{"encrypt without keys", crypt.Sources{Encrypt: true}, nil, "--encrypt needs a key"},
		{"world-readable identity", crypt.Sources{IdentityFile: worldKey}, nil, "chmod o-rwx"},
		{"bad identity", crypt.Sources{IdentityFile: badKey}, nil, "AGE-SECRET-KEY-1…"},
		{"bad identity env", crypt.Sources{}, map[string]string{crypt.EnvIdentity: secret}, crypt.EnvIdentity},
		{"bad recipient env", crypt.Sources{Encrypt: true}, map[string]string{crypt.EnvRecipients: secret}, crypt.EnvRecipients},
		{"missing file", crypt.Sources{IdentityFile: filepath.Join(dir, "nope")}, nil, "no such file"},
		{"empty passphrase line", crypt.Sources{PassphraseFile: emptyPass}, nil, "first line is empty"},
		{"passphrase twice", crypt.Sources{PassphraseFile: emptyPass}, map[string]string{crypt.EnvPassphrase: "p"}, "keep one"},
		{"passphrase and recipients", crypt.Sources{Encrypt: true, RecipientsFile: recFile}, map[string]string{crypt.EnvPassphrase: "p"}, "keep one"},
	} {
		t.Run(c.name, func(t *testing.T) {
			c.src.Getenv = func(k string) string { return c.env[k] }
			_, err := crypt.Load(c.src)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("got %v, want an error containing %q", err, c.want)
			}
			if strings.Contains(err.Error(), "QQQQ") || strings.Contains(err.Error(), "\n") {
				t.Errorf("error shows key material or is not one line: %v", err)
			}
		})
	}
}

func TestRandomObjectsNeverLeak(t *testing.T) {
	// A random plaintext and its ciphertext share no long run: the
	// payload is not stored in the clear anywhere.
	raw := mem.New()
	s := crypt.Wrap(raw, keysFor(newIdentity(t)))
	data := make([]byte, 1<<20)
	rand.Read(data)
	if err := s.Put(t.Context(), "k", bytes.NewReader(data), int64(len(data)), nil); err != nil {
		t.Fatal(err)
	}
	stored, _ := rawGet(t, raw, "k")
	if bytes.Contains(stored, data[500000:500032]) {
		t.Fatal("ciphertext contains a run of the plaintext")
	}
}
