package crypt

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"strings"

	"filippo.io/age"
)

// Environment variables that carry key material. They are read directly,
// never turned into command-line flags, so their values cannot show in
// ps output, in --help or in a usage error.
const (
	EnvIdentity   = "WALSHIP_DECRYPT_IDENTITY"   // age secret keys, one per line
	EnvRecipients = "WALSHIP_ENCRYPT_RECIPIENTS" // age public keys, one per line or comma-separated
	EnvPassphrase = "WALSHIP_ENCRYPT_PASSPHRASE" // a passphrase (scrypt)
)

// PassphraseWorkFactor is the scrypt cost (2^N) of an object encrypted
// with a passphrase. Every object pays it once when written and once when
// read, so it is kept lower than age's interactive default: about 30 ms
// and 16 MiB on a current core. A passphrase must therefore be long and
// random (openssl rand -base64 32); key pairs cost nothing per object and
// are the better choice.
const PassphraseWorkFactor = 14

// maxKeyFile bounds what is read from a key file.
const maxKeyFile = 1 << 20

// Sources says where one run's keys come from. File names come from flags
// or the config file; the keys themselves only from files or the
// environment.
type Sources struct {
	Encrypt        bool   // write new objects encrypted (implied by recipients)
	RecipientsFile string // age public keys
	IdentityFile   string // age secret keys
	PassphraseFile string // first line is the passphrase
	// Getenv reads the environment; nil means os.Getenv.
	Getenv func(string) string
}

// Load reads the keys named by src. With nothing configured it returns
// empty Keys: objects are written plain and encrypted ones cannot be
// read. Errors name the setting to fix and never contain key material.
func Load(src Sources) (Keys, error) {
	getenv := src.Getenv
	if getenv == nil {
		getenv = os.Getenv
	}
	var k Keys
	if src.IdentityFile != "" {
		text, err := readSecretFile(src.IdentityFile, "--decrypt-identity-file")
		if err != nil {
			return Keys{}, err
		}
		ids, err := age.ParseIdentities(strings.NewReader(text))
		if err != nil {
			return Keys{}, fmt.Errorf("--decrypt-identity-file %s: %v (expected lines \"AGE-SECRET-KEY-1…\", as written by walship keygen)", src.IdentityFile, err)
		}
		k.Identities = append(k.Identities, ids...)
	}
	if text := getenv(EnvIdentity); text != "" {
		ids, err := age.ParseIdentities(strings.NewReader(text))
		if err != nil {
			return Keys{}, fmt.Errorf("%s: %v (expected lines \"AGE-SECRET-KEY-1…\")", EnvIdentity, err)
		}
		k.Identities = append(k.Identities, ids...)
	}

	passphrase := getenv(EnvPassphrase)
	if src.PassphraseFile != "" {
		if passphrase != "" {
			return Keys{}, fmt.Errorf("both --encrypt-passphrase-file and %s are set: keep one", EnvPassphrase)
		}
		text, err := readSecretFile(src.PassphraseFile, "--encrypt-passphrase-file")
		if err != nil {
			return Keys{}, err
		}
		passphrase, _, _ = strings.Cut(text, "\n")
		passphrase = strings.TrimSuffix(passphrase, "\r")
		if passphrase == "" {
			return Keys{}, fmt.Errorf("--encrypt-passphrase-file %s: the first line is empty; put the passphrase there", src.PassphraseFile)
		}
	}
	if passphrase != "" {
		id, err := age.NewScryptIdentity(passphrase)
		if err != nil {
			return Keys{}, fmt.Errorf("passphrase: %v", err)
		}
		k.Identities = append(k.Identities, id)
	}

	var recipients []age.Recipient
	if src.RecipientsFile != "" {
		b, err := readBounded(src.RecipientsFile)
		if err != nil {
			return Keys{}, fmt.Errorf("--encrypt-recipient-file: %w", err)
		}
		rs, err := age.ParseRecipients(strings.NewReader(string(b)))
		if err != nil {
			return Keys{}, fmt.Errorf("--encrypt-recipient-file %s: %v (expected lines \"age1…\", the public keys printed by walship keygen)", src.RecipientsFile, err)
		}
		recipients = append(recipients, rs...)
	}
	if text := getenv(EnvRecipients); text != "" {
		rs, err := age.ParseRecipients(strings.NewReader(strings.ReplaceAll(text, ",", "\n")))
		if err != nil {
			return Keys{}, fmt.Errorf("%s: %v (expected public keys \"age1…\")", EnvRecipients, err)
		}
		recipients = append(recipients, rs...)
	}

	// Public keys mean encryption; --encrypt asks for it with the keys
	// of a key file or passphrase instead.
	if !src.Encrypt && len(recipients) == 0 {
		return k, nil
	}
	switch {
	case passphrase != "" && len(recipients) > 0:
		return Keys{}, errors.New("--encrypt with both a passphrase and public-key recipients: an object is encrypted either to a passphrase or to keys; keep one")
	case passphrase != "":
		r, err := age.NewScryptRecipient(passphrase)
		if err != nil {
			return Keys{}, fmt.Errorf("passphrase: %v", err)
		}
		r.SetWorkFactor(PassphraseWorkFactor)
		recipients = []age.Recipient{r}
	case len(recipients) == 0:
		// One key file on every host: encrypt to the identities' own
		// public keys.
		for _, id := range k.Identities {
			if r := recipientOf(id); r != nil {
				recipients = append(recipients, r)
			}
		}
	}
	if len(recipients) == 0 {
		return Keys{}, fmt.Errorf("--encrypt needs a key: set --encrypt-recipient-file (public keys; a pushing host needs nothing else), --decrypt-identity-file, or a passphrase (--encrypt-passphrase-file or %s)", EnvPassphrase)
	}
	k.Recipients = recipients
	return k, nil
}

// readSecretFile reads a file holding key material, refusing one that
// other users can read, as ssh and PostgreSQL do for their keys.
func readSecretFile(path, flag string) (string, error) {
	st, err := os.Stat(path)
	if err != nil {
		return "", fmt.Errorf("%s: %w", flag, err)
	}
	if st.Mode().Perm()&0o007 != 0 {
		return "", fmt.Errorf("%s %s is readable by other users (mode %04o): chmod o-rwx %s", flag, path, st.Mode().Perm(), path)
	}
	b, err := readBounded(path)
	if err != nil {
		return "", fmt.Errorf("%s: %w", flag, err)
	}
	return string(b), nil
}

func readBounded(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxKeyFile+1))
	if err != nil {
		return nil, err
	}
	if len(b) > maxKeyFile {
		return nil, fmt.Errorf("%s is larger than %d bytes: not a key file", path, maxKeyFile)
	}
	return b, nil
}

// Generate writes a new X25519 identity to path, which must not exist
// (mode 0600), and returns its public key.
func Generate(path string) (string, error) {
	id, err := age.GenerateX25519Identity()
	if err != nil {
		return "", err
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if errors.Is(err, fs.ErrExist) {
		return "", fmt.Errorf("%s already exists: walship keygen never overwrites a key (old objects need it); choose another name", path)
	}
	if err != nil {
		return "", err
	}
	text := fmt.Sprintf("# walship archive key; public key: %s\n%s\n", id.Recipient(), id)
	if _, err := f.WriteString(text); err != nil {
		f.Close()
		os.Remove(path)
		return "", err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		os.Remove(path)
		return "", err
	}
	if err := f.Close(); err != nil {
		os.Remove(path)
		return "", err
	}
	return id.Recipient().String(), nil
}

// PublicKeys returns the public keys of the identities in an identity
// file, for the recipients file of pushing hosts.
func PublicKeys(path string) ([]string, error) {
	text, err := readSecretFile(path, "identity file")
	if err != nil {
		return nil, err
	}
	ids, err := age.ParseIdentities(strings.NewReader(text))
	if err != nil {
		return nil, fmt.Errorf("%s: %v", path, err)
	}
	var out []string
	for _, id := range ids {
		if r := recipientOf(id); r != nil {
			out = append(out, fmt.Sprint(r))
		}
	}
	return out, nil
}

// recipientOf is the public key of a key-pair identity; nil for a
// passphrase.
func recipientOf(id age.Identity) age.Recipient {
	switch id := id.(type) {
	case *age.X25519Identity:
		return id.Recipient()
	case *age.HybridIdentity:
		return id.Recipient()
	}
	return nil
}
