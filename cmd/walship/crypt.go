package main

import (
	"fmt"

	"github.com/urfave/cli/v2"

	"github.com/walship/walship/archive"
	"github.com/walship/walship/storage"
	"github.com/walship/walship/storage/crypt"
)

// Encryption flags. They name files only: key material comes from files
// or the environment (crypt.EnvIdentity, crypt.EnvRecipients,
// crypt.EnvPassphrase), never from an argument that ps would show.
const (
	flagEncrypt               = "encrypt"
	flagEncryptRecipientFile  = "encrypt-recipient-file"
	flagDecryptIdentityFile   = "decrypt-identity-file"
	flagEncryptPassphraseFile = "encrypt-passphrase-file"
)

func encryptionFlags() []cli.Flag {
	return []cli.Flag{
		&cli.BoolFlag{Name: flagEncrypt, EnvVars: []string{"WALSHIP_ENCRYPT"}, Usage: "encrypt every new object on this host with age (client-side), to the public keys of --encrypt-recipient-file (which alone turns encryption on), --decrypt-identity-file or the passphrase; objects already stored stay as they are"},
		&cli.StringFlag{Name: flagEncryptRecipientFile, EnvVars: []string{"WALSHIP_ENCRYPT_RECIPIENT_FILE"}, Usage: "`FILE` of age public keys (age1…, one per line): encrypt every new object to them; all a host that only pushes needs (or set " + crypt.EnvRecipients + ")"},
		&cli.StringFlag{Name: flagDecryptIdentityFile, EnvVars: []string{"WALSHIP_DECRYPT_IDENTITY_FILE"}, Usage: "`FILE` of age secret keys (from walship keygen; old keys too after a rotation) to decrypt with, and to encrypt to when no recipients are given (or set " + crypt.EnvIdentity + "); not readable by other users"},
		&cli.StringFlag{Name: flagEncryptPassphraseFile, EnvVars: []string{"WALSHIP_ENCRYPT_PASSPHRASE_FILE"}, Usage: "`FILE` whose first line is a passphrase, instead of keys (or set " + crypt.EnvPassphrase + "); slower per object, and every host can then decrypt"},
	}
}

// encryption wraps the archive with the keys of this run. It wraps even
// when no key is configured, so that an encrypted object read without
// one fails with an error naming the setting, not as damaged data.
func encryption(c *cli.Context, s storage.Storage) (storage.Storage, error) {
	k, err := crypt.Load(crypt.Sources{
		Encrypt:        c.Bool(flagEncrypt),
		RecipientsFile: c.String(flagEncryptRecipientFile),
		IdentityFile:   c.String(flagDecryptIdentityFile),
		PassphraseFile: c.String(flagEncryptPassphraseFile),
	})
	if err != nil {
		return nil, withCode(exitUsage, err)
	}
	k.Plain = archive.ReadableByAll
	return crypt.Wrap(s, k), nil
}

func (a *app) keygenCommand() *cli.Command {
	return &cli.Command{
		Name:      "keygen",
		Usage:     "create an age key for --encrypt, or print the public key of one",
		ArgsUsage: "FILE",
		Description: `Writes a new age secret key to FILE (mode 0600; an existing FILE is never
overwritten) and prints its public key. Keep FILE on the hosts that
restore (--decrypt-identity-file) and a copy somewhere safe: without it
the archive cannot be read. Hosts that only push need the public key
alone (--encrypt-recipient-file), so a compromised primary cannot read
old backups.

   walship keygen /etc/walship/archive.key
   walship keygen --public /etc/walship/archive.key > /etc/walship/archive.pub`,
		Flags: []cli.Flag{
			&cli.BoolFlag{Name: "public", Usage: "print the public keys of the existing key file FILE; write nothing"},
		},
		Action: a.keygen,
	}
}

func (a *app) keygen(c *cli.Context) error {
	argv, err := args(c, 1)
	if err != nil {
		return err
	}
	if c.Bool("public") {
		keys, err := crypt.PublicKeys(argv[0])
		if err != nil {
			return withCode(exitUsage, fmt.Errorf("keygen --public: %w", err))
		}
		if len(keys) == 0 {
			return withCode(exitUsage, fmt.Errorf("keygen --public: %s holds no key pair", argv[0]))
		}
		for _, k := range keys {
			fmt.Fprintln(a.stdout, k)
		}
		return nil
	}
	pub, err := crypt.Generate(argv[0])
	if err != nil {
		return withCode(exitUsage, fmt.Errorf("keygen: %w", err))
	}
	fmt.Fprintln(a.stdout, pub)
	a.log.Info("wrote a new archive key; back it up: without it encrypted objects cannot be read", "file", argv[0])
	return nil
}
