package main

import (
	"os"
	"strings"
	"testing"

	"github.com/sluice-proxy/sluice/config"
)

// TestReadmeConfigsValidate checks that every whole YAML example in the
// README (those with a routes: key) is a valid configuration, so the
// cookbook cannot drift from the loader.
func TestReadmeConfigsValidate(t *testing.T) {
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	blocks := 0
	for i, part := range strings.Split(string(readme), "```yaml\n")[1:] {
		block, _, ok := strings.Cut(part, "```")
		if !ok {
			t.Fatalf("yaml block %d is not closed", i)
		}
		if !strings.Contains(block, "routes:") {
			continue // a fragment of a route
		}
		blocks++
		if !strings.Contains(block, "listen:") {
			block = "listen: {http: \"127.0.0.1:0\"}\n" + block
		}
		if _, err := config.Parse("README.md", []byte(block)); err != nil {
			// Certificate files named in an example do not exist here;
			// every other problem is a mistake in the README.
			for _, line := range strings.Split(err.Error(), "\n") {
				if !strings.HasSuffix(line, ": no such file") {
					t.Errorf("README yaml block %d does not validate:\n%s\n%s", i, block, line)
				}
			}
		}
	}
	if blocks < 4 {
		t.Fatalf("found %d whole yaml examples in the README, want at least 4", blocks)
	}
}
