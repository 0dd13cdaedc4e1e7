package tls

import (
	"errors"
	"fmt"
	"strings"

	"github.com/smallstep/truststore"
)

// InstallRoot installs the internal CA's root certificate (creating the CA
// first if the storage directory has none) into the system trust store, so
// that curl, Go programs and browsers using the system store trust the
// certificates internal mode issues. Where Firefox/NSS databases and
// certutil are present it installs into them too, best effort.
//
// On Debian and Ubuntu the root is written to /usr/local/share/ca-certificates
// and update-ca-certificates is run (package ca-certificates), which needs
// root: run `sudo sluice trust`. Installing the same root twice is harmless.
func InstallRoot(storage string) error {
	path, err := RootCertificate(storage)
	if err != nil {
		return err
	}
	if err := trustPrecheck(); err != nil {
		return fmt.Errorf("installing %s into the system trust store: %w", path, err)
	}
	var opts []truststore.Option
	if nss, err := truststore.NewNSSTrust(); err == nil {
		opts = append(opts, truststore.WithTrust(nss))
	}
	if err := truststore.InstallFile(path, opts...); err != nil {
		return fmt.Errorf("installing %s into the system trust store: %w", path, explainTrustError(err))
	}
	return nil
}

func explainTrustError(err error) error {
	if errors.Is(err, truststore.ErrNotSupported) {
		return fmt.Errorf("%w (no known trust store on this system)", err)
	}
	var cmdErr *truststore.CmdError
	if errors.As(err, &cmdErr) {
		out := strings.TrimSpace(string(cmdErr.Out()))
		if out != "" {
			return fmt.Errorf("%w: %s", err, out)
		}
	}
	return err
}
