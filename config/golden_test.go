package config

import (
	"bytes"
	"flag"
	"os"
	"testing"

	"github.com/google/go-cmp/cmp"
)

var update = flag.Bool("update", false, "rewrite testdata/*.golden from the current output")

// TestErrorsGolden checks the errors of testdata/errors.yaml against
// testdata/errors.golden, and that docs/config.md shows both as they are.
// Refresh the golden file with go test ./config -run TestErrorsGolden -update.
func TestErrorsGolden(t *testing.T) {
	const file, golden = "testdata/errors.yaml", "testdata/errors.golden"
	_, err := Load(file)
	if err == nil {
		t.Fatalf("Load(%s) succeeded, want errors", file)
	}
	got := err.Error() + "\n"
	if *update {
		if err := os.WriteFile(golden, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(string(want), got); diff != "" {
		t.Errorf("errors of %s (-%s +got):\n%s", file, golden, diff)
	}

	doc, err := os.ReadFile("../docs/config.md")
	if err != nil {
		t.Fatal(err)
	}
	input, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	for _, block := range []string{"```yaml\n" + string(input) + "```\n", "```text\n" + string(want) + "```\n"} {
		if !bytes.Contains(doc, []byte(block)) {
			t.Errorf("docs/config.md does not show this block:\n%s", block)
		}
	}
}
