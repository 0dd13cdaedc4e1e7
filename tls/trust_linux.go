package tls

import (
	"errors"
	"fmt"
	"os"
	"os/exec"

	"github.com/smallstep/truststore"
)

// trustPrecheck turns the failures truststore would report obscurely (a
// failed "tee", an unknown command) into advice for the person at the
// terminal.
func trustPrecheck() error {
	if len(truststore.SystemTrustCommand) == 0 {
		return errors.New("no system trust store found (on Debian or Ubuntu: apt-get install ca-certificates)")
	}
	tool := truststore.SystemTrustCommand[0]
	if _, err := exec.LookPath(tool); err != nil {
		hint := ""
		if _, err := os.Stat("/etc/debian_version"); err == nil {
			hint = " (on Debian or Ubuntu: apt-get install ca-certificates)"
		}
		return fmt.Errorf("%s not found in PATH%s", tool, hint)
	}
	if os.Geteuid() != 0 {
		if _, err := exec.LookPath("sudo"); err != nil {
			return errors.New("changing the system trust store needs root: run this command as root")
		}
		// truststore runs the commands through sudo, which asks for a
		// password if it needs one.
	}
	return nil
}
