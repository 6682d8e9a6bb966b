package cdc

import (
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// TestHolderGone: a process's identity names it while it runs, also as a
// zombie no longer does, nor once its pid is free; this process and
// identities of another machine or pid namespace are never taken for gone.
func TestHolderGone(t *testing.T) {
	self := procIdentity(os.Getpid())
	if self == "" {
		t.Skip("no /proc: process identities are not used here")
	}
	if holderGone(self) {
		t.Fatal("this process was taken for gone")
	}
	child := exec.Command("sleep", "60")
	if err := child.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = child.Process.Kill(); _ = child.Wait() })
	id := procIdentity(child.Process.Pid)
	if id == "" || holderGone(id) {
		t.Fatalf("running child %q taken for gone", id)
	}
	// Killed but not reaped: a zombie publishes nothing.
	if err := child.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	waitZombie(t, child.Process.Pid)
	if !holderGone(id) {
		t.Fatal("killed child (a zombie) not taken for gone")
	}
	_ = child.Wait()
	if !holderGone(id) {
		t.Fatal("reaped child not taken for gone")
	}
	// The same pid with another start time is another process.
	parts := strings.Split(self, "/")
	parts[3] += "1"
	if holderGone(strings.Join(parts, "/")) {
		t.Fatal("an identity with this process's pid was taken for gone")
	}
	for _, other := range []string{
		"another-boot/" + strings.Join(strings.Split(id, "/")[1:], "/"),
		strings.Split(id, "/")[0] + "/pid:[1]/" + strings.Join(strings.Split(id, "/")[2:], "/"),
		"", "garbage", "a/b/c",
	} {
		if holderGone(other) {
			t.Errorf("identity %q, which does not compare, taken for gone", other)
		}
	}
}

func waitZombie(t *testing.T, pid int) {
	t.Helper()
	for range 500 {
		if _, state, ok := procStart(pid); ok && state == 'Z' {
			return
		}
		sleepShort()
	}
	t.Fatalf("process %d did not become a zombie", pid)
}

func sleepShort() { time.Sleep(10 * time.Millisecond) }
