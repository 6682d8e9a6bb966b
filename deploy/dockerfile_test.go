package deploy

import (
	"debug/buildinfo"
	"debug/elf"
	"fmt"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/moby/buildkit/frontend/dockerfile/parser"
)

// testVersion is the VERSION build argument the tests build the image's
// binary with; `tablecast version` must print it.
var testVersion = fmt.Sprintf("deploy-test-%d", os.Getpid())

// instruction is one Dockerfile instruction as buildkit's parser reads it.
type instruction struct {
	cmd   string            // upper case: FROM, RUN, COPY, …
	flags map[string]string // --from=build → from: build
	args  []string
	json  bool // exec form (["a", "b"])
	line  int
}

// stage is a FROM and the instructions after it.
type stage struct {
	base, name string
	instrs     []instruction
}

func (s stage) all(cmd string) []instruction {
	var out []instruction
	for _, in := range s.instrs {
		if in.cmd == cmd {
			out = append(out, in)
		}
	}
	return out
}

func (s stage) last(cmd string) (instruction, bool) {
	all := s.all(cmd)
	if len(all) == 0 {
		return instruction{}, false
	}
	return all[len(all)-1], true
}

// env is the stage's ENV, in order.
func (s stage) env() [][2]string {
	var out [][2]string
	for _, in := range s.all("ENV") {
		for i := 0; i+1 < len(in.args); i += 3 { // name, value, "="
			out = append(out, [2]string{in.args[i], in.args[i+1]})
		}
	}
	return out
}

// parseDockerfile parses path with buildkit's own parser (the one `docker
// build` uses) into stages.
func parseDockerfile(t testing.TB, file string) []stage {
	t.Helper()
	f, err := os.Open(file)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	res, err := parser.Parse(f)
	if err != nil {
		t.Fatalf("parse %s: %v", file, err)
	}
	for _, w := range res.Warnings {
		t.Errorf("%s: %s", file, w.Short)
	}
	var stages []stage
	for _, n := range res.AST.Children {
		in := instruction{cmd: strings.ToUpper(n.Value), flags: map[string]string{}, json: n.Attributes["json"], line: n.StartLine}
		for _, fl := range n.Flags {
			k, v, _ := strings.Cut(strings.TrimPrefix(fl, "--"), "=")
			in.flags[k] = v
		}
		for a := n.Next; a != nil; a = a.Next {
			in.args = append(in.args, a.Value)
		}
		if in.cmd == "FROM" {
			s := stage{base: in.args[0]}
			if len(in.args) == 3 && strings.EqualFold(in.args[1], "AS") {
				s.name = in.args[2]
			}
			stages = append(stages, s)
			continue
		}
		if len(stages) == 0 {
			if in.cmd != "ARG" {
				t.Fatalf("%s:%d: %s before FROM", file, in.line, in.cmd)
			}
			continue
		}
		stages[len(stages)-1].instrs = append(stages[len(stages)-1].instrs, in)
	}
	return stages
}

// built is the result of running the image's build stage here.
var built struct {
	once    sync.Once
	tmp     string // the directory it ran in, removed after the tests
	workdir string // the build stage's WORKDIR, on this machine
	stage   string // its path in the image
	bin     string
	err     error
}

// tablecastBinary is the binary the image's build stage makes, built here
// by running that stage's steps (see buildStage); every test of this
// package runs it.
func tablecastBinary(t testing.TB) string {
	t.Helper()
	built.once.Do(func() { built.err = buildStage(t) })
	if built.err != nil {
		t.Fatal(built.err)
	}
	return built.bin
}

// buildStage does what `docker build` does for the first stage of
// deploy/Dockerfile, on this machine: a fresh directory as its WORKDIR, its
// COPY steps from the build context (the repository's files, less what
// Dockerfile.dockerignore excludes), its ARG and ENV, and each RUN with
// /bin/sh -c, exactly as written. Paths in RUN steps are relative to the
// WORKDIR, so nothing outside it is touched.
func buildStage(t testing.TB) error {
	root := repoRoot(t)
	stages := parseDockerfile(t, "Dockerfile")
	if len(stages) < 2 {
		return fmt.Errorf("Dockerfile has %d stages, want a build stage and a small final one", len(stages))
	}
	build := stages[0]
	tmp, err := os.MkdirTemp("", "tablecast-image-")
	if err != nil {
		return err
	}
	built.tmp = tmp
	ignore, err := readIgnore("Dockerfile.dockerignore")
	if err != nil {
		return err
	}
	files, err := contextFiles(root, ignore)
	if err != nil {
		return err
	}
	env := append(systemEnv(), goEnv()...)
	workdir := ""
	for _, in := range build.instrs {
		switch in.cmd {
		case "WORKDIR":
			built.stage = in.args[0]
			workdir = filepath.Join(tmp, in.args[0])
			if err := os.MkdirAll(workdir, 0o755); err != nil {
				return err
			}
		case "COPY":
			if workdir == "" {
				return fmt.Errorf("Dockerfile:%d: COPY before WORKDIR", in.line)
			}
			if err := copyFromContext(root, files, in.args[:len(in.args)-1], filepath.Join(workdir, in.args[len(in.args)-1])); err != nil {
				return fmt.Errorf("Dockerfile:%d: %w", in.line, err)
			}
		case "ARG":
			name, def, _ := strings.Cut(in.args[0], "=")
			if name == "VERSION" {
				def = testVersion // --build-arg VERSION=…
			}
			env = append(env, name+"="+def)
		case "ENV":
			for i := 0; i+1 < len(in.args); i += 3 {
				env = append(env, in.args[i]+"="+in.args[i+1])
			}
		case "RUN":
			if in.json {
				return fmt.Errorf("Dockerfile:%d: RUN in exec form; the build stage's steps run with a shell", in.line)
			}
			cmd := exec.Command("/bin/sh", "-c", in.args[0])
			cmd.Dir, cmd.Env = workdir, env
			if out, err := cmd.CombinedOutput(); err != nil {
				return fmt.Errorf("Dockerfile:%d: RUN %s: %v\n%s", in.line, in.args[0], err, out)
			}
		default:
			return fmt.Errorf("Dockerfile:%d: %s in the build stage, which this test does not know how to run", in.line, in.cmd)
		}
	}
	built.workdir = workdir
	// The final stage's binary is what the build stage left where the
	// final stage copies it from.
	final := stages[len(stages)-1]
	for _, in := range final.all("COPY") {
		if in.flags["from"] != build.name {
			continue
		}
		src := in.args[0]
		local, err := stagePath(src)
		if err != nil {
			return fmt.Errorf("Dockerfile:%d: %w", in.line, err)
		}
		if _, err := os.Stat(local); err != nil {
			return fmt.Errorf("Dockerfile:%d: COPY --from=%s %s: the build stage made no such file", in.line, build.name, src)
		}
		if ep, _ := final.last("ENTRYPOINT"); len(ep.args) > 0 && in.args[1] == ep.args[0] {
			built.bin = local
		}
	}
	if built.bin == "" {
		return fmt.Errorf("the final stage copies no binary from the build stage to its ENTRYPOINT")
	}
	return nil
}

// stagePath maps a path of the build stage's file system to this machine.
func stagePath(p string) (string, error) {
	rel, err := filepath.Rel(built.stage, p)
	if err != nil || strings.HasPrefix(rel, "..") {
		return "", fmt.Errorf("%s is outside the build stage's WORKDIR %s", p, built.stage)
	}
	return filepath.Join(built.workdir, rel), nil
}

// goEnv passes the Go caches on, so that the build stage's `go mod
// download` and `go build` reuse what this machine has.
func goEnv() []string {
	out, err := exec.Command("go", "env", "GOCACHE", "GOMODCACHE", "GOPATH", "GOPROXY", "GOFLAGS").Output()
	if err != nil {
		return nil
	}
	lines := strings.Split(strings.TrimRight(string(out), "\n"), "\n")
	var env []string
	for i, k := range []string{"GOCACHE", "GOMODCACHE", "GOPATH", "GOPROXY", "GOFLAGS"} {
		if i < len(lines) && lines[i] != "" {
			env = append(env, k+"="+lines[i])
		}
	}
	return env
}

// readIgnore reads a .dockerignore file's patterns.
func readIgnore(file string) ([]string, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, l := range strings.Split(string(b), "\n") {
		l = strings.TrimSpace(l)
		if l == "" || strings.HasPrefix(l, "#") {
			continue
		}
		out = append(out, strings.TrimPrefix(path.Clean(l), "/"))
	}
	return out, nil
}

// ignored reports whether a context path (slash-separated, relative) is
// excluded by patterns: a pattern excludes the paths it matches and
// everything under them; "**/" matches any number of directories.
func ignored(p string, patterns []string) bool {
	for _, pat := range patterns {
		if strings.HasPrefix(pat, "!") {
			continue // exceptions: none are used
		}
		for q := p; q != "." && q != "/"; q = path.Dir(q) {
			if ok, _ := path.Match(pat, q); ok {
				return true
			}
			if rest, ok := strings.CutPrefix(pat, "**/"); ok {
				if m, _ := path.Match(rest, path.Base(q)); m {
					return true
				}
			}
		}
	}
	return false
}

// contextFiles lists what `docker build` would send from root: the
// repository's files (tracked, or new and not ignored by git), less the
// Dockerfile's ignore patterns.
func contextFiles(root string, ignore []string) ([]string, error) {
	cmd := exec.Command("git", "ls-files", "-z", "--cached", "--others", "--exclude-standard")
	cmd.Dir = root
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("git ls-files: %w", err)
	}
	var files []string
	for _, f := range strings.Split(strings.TrimRight(string(out), "\x00"), "\x00") {
		if f == "" || ignored(f, ignore) {
			continue
		}
		if _, err := os.Lstat(filepath.Join(root, f)); err != nil {
			continue // deleted in the work tree
		}
		files = append(files, f)
	}
	return files, nil
}

// copyFromContext copies srcs (context paths; "." is everything) to dest.
func copyFromContext(root string, files, srcs []string, dest string) error {
	for _, src := range srcs {
		src = path.Clean(src)
		matched := false
		for _, f := range files {
			var rel string
			switch {
			case src == ".":
				rel = f
			case f == src:
				rel = path.Base(f)
			case strings.HasPrefix(f, src+"/"):
				rel = strings.TrimPrefix(f, src+"/")
			default:
				continue
			}
			matched = true
			if err := copyFile(filepath.Join(root, f), filepath.Join(dest, rel)); err != nil {
				return err
			}
		}
		if !matched {
			return fmt.Errorf("COPY %s: not in the build context", src)
		}
	}
	return nil
}

func copyFile(from, to string) error {
	info, err := os.Lstat(from)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(to), 0o755); err != nil {
		return err
	}
	if info.Mode()&fs.ModeSymlink != 0 {
		target, err := os.Readlink(from)
		if err != nil {
			return err
		}
		return os.Symlink(target, to)
	}
	b, err := os.ReadFile(from)
	if err != nil {
		return err
	}
	return os.WriteFile(to, b, info.Mode().Perm())
}

// TestDockerfile checks deploy/Dockerfile as `docker build` reads it: a
// build stage whose steps, run here, make a static binary (no cgo, no
// interpreter, no shared libraries) with the VERSION build argument
// stamped in; a final stage on distroless static (or scratch), as a
// non-root user, whose ENV are real variables, with a HEALTHCHECK that
// runs the binary's own check and a timeout that outlasts it.
func TestDockerfile(t *testing.T) {
	bin := tablecastBinary(t)
	stages := parseDockerfile(t, "Dockerfile")
	final := stages[len(stages)-1]

	f, err := elf.Open(bin)
	if err != nil {
		t.Fatalf("the image's binary: %v", err)
	}
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			t.Error("the image's binary has a program interpreter: it is not static")
		}
	}
	if libs, _ := f.ImportedLibraries(); len(libs) > 0 {
		t.Errorf("the image's binary needs shared libraries %v", libs)
	}
	f.Close()
	info, err := buildinfo.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	settings := map[string]string{}
	for _, s := range info.Settings {
		settings[s.Key] = s.Value
	}
	if settings["CGO_ENABLED"] != "0" {
		t.Errorf("the image's binary was built with CGO_ENABLED=%q, want 0", settings["CGO_ENABLED"])
	}
	code, out := run(t, time.Minute, nil, bin, "version")
	if code != 0 || !strings.HasPrefix(out, "tablecast "+testVersion+" ") {
		t.Errorf("tablecast version of the image's binary: exit %d, %q; want the VERSION build argument %s", code, out, testVersion)
	}

	gomod, err := os.ReadFile(filepath.Join(repoRoot(t), "go.mod"))
	if err != nil {
		t.Fatal(err)
	}
	if m := regexp.MustCompile(`(?m)^go (\S+)$`).FindSubmatch(gomod); m == nil || !strings.HasPrefix(stages[0].base, "golang:"+string(m[1])) {
		t.Errorf("the build stage is FROM %s; go.mod asks for go %s", stages[0].base, m[1])
	}

	switch base := final.base; {
	case strings.HasPrefix(base, "gcr.io/distroless/static"):
	case base == "scratch":
		if !slices.ContainsFunc(final.all("COPY"), func(in instruction) bool { return strings.Contains(strings.Join(in.args, " "), "ca-certificates") }) {
			t.Error("the final stage is scratch without CA certificates: TLS to NATS or PostgreSQL would fail")
		}
	default:
		t.Errorf("the final stage is FROM %s, want gcr.io/distroless/static… or scratch", base)
	}
	user, ok := final.last("USER")
	if !ok {
		t.Error("the final stage sets no USER: it would run as root")
	} else if u, _, _ := strings.Cut(user.args[0], ":"); u == "root" || u == "0" {
		t.Errorf("the final stage runs as USER %s", user.args[0])
	}

	var names []string
	env := map[string]string{}
	for _, kv := range final.env() {
		names = append(names, kv[0])
		env[kv[0]] = kv[1]
	}
	checkVariables(t, "Dockerfile ENV", names)
	if dir := env["TABLECAST_DATA_DIR"]; dir != "" {
		vols := final.all("VOLUME")
		if !slices.ContainsFunc(vols, func(in instruction) bool { return slices.Contains(in.args, dir) }) {
			t.Errorf("TABLECAST_DATA_DIR is %s, which is no VOLUME: JetStream's files would live in the container's layer", dir)
		}
	}
	if _, port, err := net.SplitHostPort(env["TABLECAST_HTTP_ADDR"]); err != nil {
		t.Errorf("the image's TABLECAST_HTTP_ADDR %q: %v", env["TABLECAST_HTTP_ADDR"], err)
	} else if ex, _ := final.last("EXPOSE"); !slices.Contains(ex.args, port) {
		t.Errorf("the image listens on %s and EXPOSEs %v", port, ex.args)
	}

	ep, ok := final.last("ENTRYPOINT")
	if !ok || !ep.json || len(ep.args) != 1 {
		t.Fatalf("ENTRYPOINT %v: want the binary alone, in exec form", ep.args)
	}
	hc, ok := final.last("HEALTHCHECK")
	switch {
	case !ok:
		t.Fatal("no HEALTHCHECK")
	case !hc.json || len(hc.args) < 3 || hc.args[0] != "CMD" || hc.args[1] != ep.args[0] || hc.args[2] != "healthcheck":
		t.Fatalf("HEALTHCHECK %v: want CMD [%q, \"healthcheck\", …] in exec form (no shell in the image)", hc.args, ep.args[0])
	}
	timeout, err := time.ParseDuration(hc.flags["timeout"])
	if err != nil || timeout <= 5*time.Second {
		t.Errorf("HEALTHCHECK --timeout=%s: want more than the 5s tablecast healthcheck waits itself", hc.flags["timeout"])
	}
}

// TestImageRunsAndReportsHealthy starts the image's binary as the image
// does (ENTRYPOINT and CMD, with the image's ENV; its port and data
// directory moved for this machine) against a real PostgreSQL, and runs
// the image's HEALTHCHECK command in the same environment until it
// passes, as the container runtime would.
func TestImageRunsAndReportsHealthy(t *testing.T) {
	bin := tablecastBinary(t)
	stages := parseDockerfile(t, "Dockerfile")
	final := stages[len(stages)-1]
	c := pgRequire(t)
	_, url := c.CreateDatabase(t)
	c.Exec(t, url, `CREATE TABLE items (id int PRIMARY KEY)`)

	port := freePort(t)
	env := systemEnv()
	for _, kv := range final.env() {
		v := kv[1]
		switch kv[0] {
		case "TABLECAST_HTTP_ADDR":
			host, _, _ := net.SplitHostPort(v)
			v = net.JoinHostPort(host, port)
		case "TABLECAST_DATA_DIR":
			v = t.TempDir()
		}
		env = append(env, kv[0]+"="+v)
	}
	slot := "tc_image_" + strconv.Itoa(os.Getpid())
	dropSlotAtCleanup(t, url, slot)
	env = append(env, "TABLECAST_DATABASE_URL="+url, "TABLECAST_SLOT="+slot, "TABLECAST_ALLOW_ANONYMOUS=true",
		"TABLECAST_NATS_LISTEN="+freeAddr(t), "TABLECAST_ADMIN_ADDR="+freeAddr(t))
	ep, _ := final.last("ENTRYPOINT")
	cmd, _ := final.last("CMD")
	if ep.args[0] != "/tablecast" {
		t.Fatalf("ENTRYPOINT %s: this test maps /tablecast to the built binary", ep.args[0])
	}
	start(t, env, bin, cmd.args...)
	hc, _ := final.last("HEALTHCHECK")
	var out string
	waitFor(t, 2*time.Minute, "the image's HEALTHCHECK to pass", func() bool {
		var code int
		code, out = run(t, time.Minute, env, bin, hc.args[2:]...)
		return code == 0
	})
	if !strings.Contains(out, `"healthy":true`) {
		t.Errorf("HEALTHCHECK passed printing %q", out)
	}
}

// TestDockerignore: the build context never carries data directories,
// build output or local secrets, and still carries every Go source.
func TestDockerignore(t *testing.T) {
	ignore, err := readIgnore("Dockerfile.dockerignore")
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{".git/config", ".data/pg/PG_VERSION", "data/jetstream/x", "bin/tablecast", "deploy/.env", "cmd/tablecast/tablecast.test", "tablecast"} {
		if !ignored(p, ignore) {
			t.Errorf("the build context would include %s", p)
		}
	}
	files, err := contextFiles(repoRoot(t), ignore)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"go.mod", "go.sum", "cmd/tablecast/main.go", "wsgate/page/index.html"} {
		if !slices.Contains(files, p) {
			t.Errorf("the build context lacks %s", p)
		}
	}
}
