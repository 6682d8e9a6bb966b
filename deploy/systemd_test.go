package deploy

import (
	"bufio"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// unitFile is a systemd unit: section → key → values in order (a key may
// repeat).
type unitFile map[string]map[string][]string

func (u unitFile) get(section, key string) string {
	v := u[section][key]
	if len(v) == 0 {
		return ""
	}
	return v[len(v)-1]
}

func parseUnit(t testing.TB, file string) unitFile {
	t.Helper()
	f, err := os.Open(file)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	u := unitFile{}
	section := ""
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		l := strings.TrimSpace(sc.Text())
		switch {
		case l == "" || strings.HasPrefix(l, "#") || strings.HasPrefix(l, ";"):
		case strings.HasPrefix(l, "[") && strings.HasSuffix(l, "]"):
			section = l[1 : len(l)-1]
			u[section] = map[string][]string{}
		default:
			k, v, ok := strings.Cut(l, "=")
			if !ok || section == "" {
				t.Fatalf("%s: %q is not key=value in a section", file, l)
			}
			u[section][strings.TrimSpace(k)] = append(u[section][strings.TrimSpace(k)], strings.TrimSpace(v))
		}
	}
	return u
}

// parseEnvFile reads an EnvironmentFile: KEY=value lines and comments.
func parseEnvFile(t testing.TB, file string) [][2]string {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	var out [][2]string
	for _, l := range strings.Split(string(b), "\n") {
		l = strings.TrimSpace(l)
		if l == "" || strings.HasPrefix(l, "#") {
			continue
		}
		k, v, ok := strings.Cut(l, "=")
		if !ok {
			t.Fatalf("%s: %q is not KEY=value", file, l)
		}
		out = append(out, [2]string{k, v})
	}
	return out
}

// subcommands are the commands `tablecast help` lists.
func subcommands(t testing.TB) []string {
	out, err := exec.Command(tablecastBinary(t), "help").Output()
	if err != nil {
		t.Fatal(err)
	}
	var cmds []string
	for _, m := range regexp.MustCompile(`(?m)^  tablecast ([a-z]+)`).FindAllStringSubmatch(string(out), -1) {
		cmds = append(cmds, m[1])
	}
	return cmds
}

// TestSystemdUnit checks deploy/systemd/tablecast.service: `systemd-analyze
// verify` accepts it (the binary's path mapped to the built one), it is
// hardened (its own user, a read-only system, no new privileges),
// restarts on failure, runs a real subcommand, and reads an environment
// file whose every variable (those commented out too) is a real one.
func TestSystemdUnit(t *testing.T) {
	bin := tablecastBinary(t)
	u := parseUnit(t, "systemd/tablecast.service")
	svc := u["Service"]
	for key, ok := range map[string]func(string) bool{
		"NoNewPrivileges": func(v string) bool { return v == "yes" || v == "true" },
		"ProtectSystem":   func(v string) bool { return v == "strict" || v == "full" },
		"Restart":         func(v string) bool { return v == "on-failure" || v == "always" },
		"EnvironmentFile": func(v string) bool { return strings.HasPrefix(v, "/") },
		"ProtectHome":     func(v string) bool { return v == "yes" || v == "read-only" || v == "tmpfs" },
	} {
		if v := u.get("Service", key); !ok(v) {
			t.Errorf("[Service] %s=%q", key, v)
		}
	}
	// A reader puts its threads under SCHED_BATCH unless they start under
	// it; a filter refusing @resources would end the process at the
	// system call, so the unit must start it under the policy.
	for _, f := range svc["SystemCallFilter"] {
		if strings.HasPrefix(f, "~") && slices.Contains(strings.Fields(strings.TrimPrefix(f, "~")), "@resources") && u.get("Service", "CPUSchedulingPolicy") != "batch" {
			t.Errorf("SystemCallFilter=%s refuses sched_setscheduler, and CPUSchedulingPolicy=%q is not batch: the reader would be killed setting it", f, u.get("Service", "CPUSchedulingPolicy"))
		}
	}
	if u.get("Service", "DynamicUser") != "yes" && (u.get("Service", "User") == "" || u.get("Service", "User") == "root") {
		t.Error("the service runs as root: set DynamicUser=yes or a dedicated User=")
	}
	exec := strings.Fields(u.get("Service", "ExecStart"))
	if len(exec) != 2 || filepath.Base(exec[0]) != "tablecast" || !slices.Contains(subcommands(t), exec[1]) || exec[1] == "help" || exec[1] == "version" {
		t.Fatalf("ExecStart=%s: want the binary and one of the long-running commands of tablecast help", u.get("Service", "ExecStart"))
	}
	envFile := filepath.Join("systemd", filepath.Base(svc["EnvironmentFile"][0]))
	text, err := os.ReadFile(envFile)
	if err != nil {
		t.Fatalf("EnvironmentFile %s has no example here: %v", svc["EnvironmentFile"][0], err)
	}
	checkVariables(t, envFile, tablecastVariables(string(text)))
	checkVariables(t, "tablecast.service", tablecastVariables(strings.Join(svc["Environment"], " ")))
	env := map[string]string{}
	for _, kv := range parseEnvFile(t, envFile) {
		env[kv[0]] = kv[1]
	}
	if dir := env["TABLECAST_DATA_DIR"]; dir != "" && dir != "/var/lib/"+u.get("Service", "StateDirectory") {
		t.Errorf("TABLECAST_DATA_DIR %s is not the service's StateDirectory /var/lib/%s, the one directory it may write", dir, u.get("Service", "StateDirectory"))
	}

	analyze, err := lookPathOrSkip(t, "systemd-analyze")
	if err != nil {
		return
	}
	dir := t.TempDir()
	unit, _ := os.ReadFile("systemd/tablecast.service")
	local := strings.ReplaceAll(string(unit), exec[0], bin)
	if err := os.WriteFile(filepath.Join(dir, "tablecast.service"), []byte(local), 0o644); err != nil {
		t.Fatal(err)
	}
	if code, out := run(t, time.Minute, systemEnv(), analyze, "verify", filepath.Join(dir, "tablecast.service")); code != 0 || strings.TrimSpace(out) != "" {
		t.Errorf("systemd-analyze verify tablecast.service: exit %d\n%s", code, out)
	}
}

// lookPathOrSkip finds a tool, skipping the test without it (failing it
// in CI, where a skipped check would hide a gap).
func lookPathOrSkip(t *testing.T, name string) (string, error) {
	p, err := exec.LookPath(name)
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("%s is not installed", name)
		}
		t.Skipf("%s is not installed", name)
	}
	return p, err
}

// TestSystemdServiceRuns runs the unit's ExecStart as systemd would, with
// the environment file's variables (the database, the data directory and
// ports moved to this machine's), until the binary's healthcheck passes;
// then its ExecReload, after which the service still runs and says it
// reloaded its keys.
func TestSystemdServiceRuns(t *testing.T) {
	bin := tablecastBinary(t)
	u := parseUnit(t, "systemd/tablecast.service")
	c := pgRequire(t)
	_, url := c.CreateDatabase(t)
	c.Exec(t, url, `CREATE TABLE items (id int PRIMARY KEY)`)
	slot := "tc_systemd_" + strconv.Itoa(os.Getpid())
	dropSlotAtCleanup(t, url, slot)

	env := systemEnv()
	for _, kv := range parseEnvFile(t, filepath.Join("systemd", filepath.Base(u.get("Service", "EnvironmentFile")))) {
		k, v := kv[0], kv[1]
		switch k {
		case "TABLECAST_DATABASE_URL":
			v = url
		case "TABLECAST_DATA_DIR":
			v = t.TempDir()
		case "TABLECAST_HTTP_ADDR":
			host, _, _ := net.SplitHostPort(v)
			v = net.JoinHostPort(host, freePort(t))
		}
		env = append(env, k+"="+v)
	}
	env = append(env, "TABLECAST_SLOT="+slot, "TABLECAST_NATS_LISTEN="+freeAddr(t), "TABLECAST_ADMIN_ADDR="+freeAddr(t))
	exec := strings.Fields(u.get("Service", "ExecStart"))
	p := start(t, env, bin, exec[1:]...)
	waitFor(t, 2*time.Minute, "the service to be healthy", func() bool {
		code, _ := run(t, time.Minute, env, bin, "healthcheck")
		return code == 0
	})

	reload := strings.Fields(strings.ReplaceAll(u.get("Service", "ExecReload"), "$MAINPID", strconv.Itoa(p.cmd.Process.Pid)))
	if code, out := run(t, time.Minute, systemEnv(), reload[0], reload[1:]...); code != 0 {
		t.Fatalf("ExecReload %v: exit %d %s", reload, code, out)
	}
	waitFor(t, 30*time.Second, "the reload in the log", func() bool { return strings.Contains(p.out.String(), "SIGHUP: reloading") })
	if err := p.cmd.Process.Signal(syscall.Signal(0)); err != nil {
		t.Fatalf("the service died on ExecReload: %v\n%s", err, p.out)
	}
	if code, out := run(t, time.Minute, env, bin, "healthcheck"); code != 0 {
		t.Errorf("after ExecReload, healthcheck: exit %d %s", code, out)
	}
}
