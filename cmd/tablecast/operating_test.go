package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestDataDirOneProcessAtATime: a second process with an embedded NATS on
// a TABLECAST_DATA_DIR in use is refused at once, naming the directory and
// the holder, and leaves the first serving; a holder killed with SIGKILL
// leaves no stale lock behind.
func TestDataDirOneProcessAtATime(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data dir") // a space, as on some hosts
	env := func(httpAddr string) []string {
		return append(baseEnv(), "TABLECAST_DATA_DIR="+dir, "TABLECAST_HTTP_ADDR="+httpAddr,
			"TABLECAST_NATS_LISTEN="+freeAddr(t), "TABLECAST_LOG_LEVEL=warn")
	}
	ready := func(addr string) {
		waitFor(t, time.Minute, "/readyz of the gateway on "+addr, func() bool {
			code, _, err := httpGet("http://" + addr + "/readyz")
			return err == nil && code == 200
		})
	}
	firstAddr := freeAddr(t)
	first := startKillable(t, env(firstAddr), "gateway")
	ready(firstAddr)

	code, _, stderr := runBinary(t, 30*time.Second, env(freeAddr(t)), "gateway")
	last := lastLine(stderr)
	if code == 0 || !strings.Contains(last, "TABLECAST_DATA_DIR "+dir+" is in use") || !strings.Contains(last, fmt.Sprintf("pid %d", first.Process.Pid)) {
		t.Fatalf("second process on the same data directory: exit %d, last line %q; want non-zero, naming the directory and pid %d\nstderr:\n%s", code, last, first.Process.Pid, stderr)
	}
	if code, _, err := httpGet("http://" + firstAddr + "/healthz"); err != nil || code != 200 {
		t.Fatalf("the first process after the second was refused: /healthz %d, %v", code, err)
	}

	_ = first.Process.Kill()
	_ = first.Wait()
	thirdAddr := freeAddr(t)
	startProcess(t, env(thirdAddr), "gateway")
	ready(thirdAddr)
}

// TestReaderSettingsRefusedBeforeNATS: the reader's own settings are
// checked with every other variable, before anything starts: all the
// problems are named at once, and the embedded NATS never made its data
// directory.
func TestReaderSettingsRefusedBeforeNATS(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	code, _, stderr := runBinary(t, time.Minute, []string{"TABLECAST_DATABASE_URL=postgres://postgres@127.0.0.1:1/x",
		"TABLECAST_DATA_DIR=" + dir, "TABLECAST_HTTP_ADDR=" + freeAddr(t), "TABLECAST_NATS_LISTEN=" + freeAddr(t),
		"TABLECAST_SLOT=Bad-Slot", "TABLECAST_SNAPSHOT=sometimes", "TABLECAST_STREAM=A.B", "TABLECAST_STALL_AFTER=0s"}, "cdc")
	for _, want := range []string{"tablecast: TABLECAST_STALL_AFTER 0s", "TABLECAST_SLOT: \"Bad-Slot\"", "TABLECAST_SNAPSHOT: \"sometimes\"", "TABLECAST_STREAM \"A.B\""} {
		if !strings.Contains(stderr, want) {
			t.Errorf("stderr does not contain %q", want)
		}
	}
	if code != 1 || strings.Contains(stderr, "embedded NATS") {
		t.Errorf("exit %d; want 1 before the embedded NATS starts", code)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("the data directory was made (%v) for a configuration refused", err)
	}
	if t.Failed() {
		t.Logf("stderr:\n%s", stderr)
	}
}

// TestMisspelledVariableWarned: a variable within two edits of one
// tablecast reads is said in the log with the name it resembles, rather
// than ignored without a word while the default (another slot) is used;
// the variables of scripts and tests are left alone.
func TestMisspelledVariableWarned(t *testing.T) {
	_, _, stderr := runBinary(t, time.Minute, []string{"TABLECAST_SLOTT=orders", "TABLECAST_DATABSE_URL=postgres://x", "TABLECAST_PG_PORT=54329", "TABLECAST_SOAK=1"}, "cdc")
	for _, want := range []string{"variable=TABLECAST_SLOTT did_you_mean=TABLECAST_SLOT", "variable=TABLECAST_DATABSE_URL did_you_mean=TABLECAST_DATABASE_URL"} {
		if !strings.Contains(stderr, want) {
			t.Errorf("stderr does not contain %q:\n%s", want, stderr)
		}
	}
	for _, not := range []string{"TABLECAST_PG_PORT", "TABLECAST_SOAK"} {
		if strings.Contains(stderr, not) {
			t.Errorf("stderr names %s:\n%s", not, stderr)
		}
	}
}

// TestDataDirDanglingLink: a TABLECAST_DATA_DIR that links to nothing (a
// volume not mounted) is named with its target, not as "file exists".
func TestDataDirDanglingLink(t *testing.T) {
	dir := t.TempDir()
	link, target := filepath.Join(dir, "data"), filepath.Join(dir, "volume", "file")
	if err := os.WriteFile(filepath.Join(dir, "volume"), nil, 0o600); err != nil { // a file where a directory should be
		t.Fatal(err)
	}
	if err := os.Symlink(target, link); err != nil {
		t.Fatal(err)
	}
	_, err := lockDataDir(link)
	if err == nil || !strings.Contains(err.Error(), "TABLECAST_DATA_DIR "+link+" is a symbolic link to "+target) {
		t.Fatalf("lockDataDir(%s): %v; want the link and its target named", link, err)
	}
}
