package deploy

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"sigs.k8s.io/yaml"
)

// manifests are the objects of deploy/kubernetes, decoded strictly.
type manifests struct {
	deployments map[string]*appsv1.Deployment
	services    map[string]*corev1.Service
	pdbs        map[string]*policyv1.PodDisruptionBudget
	configMaps  map[string]*corev1.ConfigMap
	secrets     map[string]*corev1.Secret
}

// decodeManifest decodes one YAML document into the k8s.io/api type of its
// kind, refusing unknown and repeated fields, as the API server's strict
// field validation does.
func decodeManifest(doc []byte) (any, error) {
	var tm metav1.TypeMeta
	if err := yaml.Unmarshal(doc, &tm); err != nil {
		return nil, err
	}
	var obj any
	switch tm.APIVersion + " " + tm.Kind {
	case "apps/v1 Deployment":
		obj = &appsv1.Deployment{}
	case "v1 Service":
		obj = &corev1.Service{}
	case "policy/v1 PodDisruptionBudget":
		obj = &policyv1.PodDisruptionBudget{}
	case "v1 ConfigMap":
		obj = &corev1.ConfigMap{}
	case "v1 Secret":
		obj = &corev1.Secret{}
	default:
		return nil, fmt.Errorf("%s %s: a kind these tests do not check", tm.APIVersion, tm.Kind)
	}
	if err := yaml.UnmarshalStrict(doc, obj); err != nil {
		return nil, fmt.Errorf("%s: %w", tm.Kind, err)
	}
	return obj, nil
}

// splitDocuments splits a YAML stream at its "---" lines.
func splitDocuments(b []byte) [][]byte {
	var docs [][]byte
	for _, d := range bytes.Split(append([]byte("\n"), b...), []byte("\n---")) {
		if len(bytes.TrimSpace(removeComments(d))) > 0 {
			docs = append(docs, d)
		}
	}
	return docs
}

func removeComments(b []byte) []byte {
	var out [][]byte
	for _, l := range bytes.Split(b, []byte("\n")) {
		if !bytes.HasPrefix(bytes.TrimSpace(l), []byte("#")) {
			out = append(out, l)
		}
	}
	return bytes.Join(out, []byte("\n"))
}

func loadManifests(t *testing.T) manifests {
	t.Helper()
	m := manifests{deployments: map[string]*appsv1.Deployment{}, services: map[string]*corev1.Service{}, pdbs: map[string]*policyv1.PodDisruptionBudget{},
		configMaps: map[string]*corev1.ConfigMap{}, secrets: map[string]*corev1.Secret{}}
	files, _ := filepath.Glob("kubernetes/*.yaml")
	if len(files) == 0 {
		t.Fatal("no manifests in deploy/kubernetes")
	}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for i, doc := range splitDocuments(b) {
			obj, err := decodeManifest(doc)
			if err != nil {
				t.Errorf("%s, document %d: %v", f, i+1, err)
				continue
			}
			switch o := obj.(type) {
			case *appsv1.Deployment:
				m.deployments[o.Name] = o
			case *corev1.Service:
				m.services[o.Name] = o
			case *policyv1.PodDisruptionBudget:
				m.pdbs[o.Name] = o
			case *corev1.ConfigMap:
				m.configMaps[o.Name] = o
			case *corev1.Secret:
				m.secrets[o.Name] = o
			}
		}
	}
	return m
}

// TestKubernetesManifestsAreStrict: a field the API does not know (a
// typo) is refused by the decoding the manifests' test uses, as the API
// server's strict validation would refuse it.
func TestKubernetesManifestsAreStrict(t *testing.T) {
	b, err := os.ReadFile("kubernetes/reader.yaml")
	if err != nil {
		t.Fatal(err)
	}
	good := splitDocuments(b)[0]
	if _, err := decodeManifest(good); err != nil {
		t.Fatalf("reader.yaml: %v", err)
	}
	for _, typo := range []struct{ from, to string }{
		{"livenessProbe:", "livenesProbe:"},
		{"failureThreshold: 60", "failureTreshold: 60"},
		{"  strategy:\n", "  stratgy:\n"},
	} {
		bad := bytes.Replace(good, []byte(typo.from), []byte(typo.to), 1)
		if bytes.Equal(bad, good) {
			t.Fatalf("reader.yaml has no %q to misspell", typo.from)
		}
		if _, err := decodeManifest(bad); err == nil || !strings.Contains(err.Error(), "unknown field") {
			t.Errorf("with %q misspelt as %q: %v, want an unknown field", typo.from, typo.to, err)
		}
	}
}

// podEnv is what a container's environment holds: its envFrom ConfigMaps
// and Secrets, then its env (values from a Secret or ConfigMap resolved
// from the manifests; from the downward API, a placeholder).
func (m manifests) podEnv(t *testing.T, c corev1.Container) map[string]string {
	t.Helper()
	env := map[string]string{}
	for _, from := range c.EnvFrom {
		switch {
		case from.ConfigMapRef != nil:
			cm, ok := m.configMaps[from.ConfigMapRef.Name]
			if !ok {
				t.Errorf("%s: envFrom ConfigMap %s is not in the manifests", c.Name, from.ConfigMapRef.Name)
				continue
			}
			for k, v := range cm.Data {
				env[k] = v
			}
		case from.SecretRef != nil:
			s, ok := m.secrets[from.SecretRef.Name]
			if !ok {
				t.Errorf("%s: envFrom Secret %s is not in the manifests", c.Name, from.SecretRef.Name)
				continue
			}
			for k, v := range s.StringData {
				env[k] = v
			}
		}
	}
	for _, e := range c.Env {
		switch {
		case e.ValueFrom == nil:
			env[e.Name] = e.Value
		case e.ValueFrom.SecretKeyRef != nil:
			ref := e.ValueFrom.SecretKeyRef
			v, ok := m.secrets[ref.Name].StringData[ref.Key]
			if s := m.secrets[ref.Name]; s == nil || !ok {
				t.Errorf("%s: %s from Secret %s key %s, which the manifests do not hold", c.Name, e.Name, ref.Name, ref.Key)
			}
			env[e.Name] = v
		case e.ValueFrom.ConfigMapKeyRef != nil:
			ref := e.ValueFrom.ConfigMapKeyRef
			cm := m.configMaps[ref.Name]
			if cm == nil || cm.Data[ref.Key] == "" {
				t.Errorf("%s: %s from ConfigMap %s key %s, which the manifests do not hold", c.Name, e.Name, ref.Name, ref.Key)
			} else {
				env[e.Name] = cm.Data[ref.Key]
			}
		default:
			env[e.Name] = "(downward API)"
		}
	}
	return env
}

// TestKubernetesManifests decodes every manifest strictly into the
// k8s.io/api types and checks what matters: one reader with Recreate,
// at least two gateways behind a Service and a PodDisruptionBudget that
// select them, probes on /healthz and /readyz on the port the container
// listens on (TABLECAST_HTTP_ADDR, on every address so the kubelet's
// probes of the pod IP are answered), non-root and read-only containers,
// requests and limits, every variable a real one, and a configuration
// tablecast itself accepts.
func TestKubernetesManifests(t *testing.T) {
	m := loadManifests(t)
	bin := tablecastBinary(t)
	roles := map[string]string{"cdc": "tablecast-reader", "gateway": "tablecast-gateway"}
	for cmd, name := range roles {
		d, ok := m.deployments[name]
		if !ok {
			t.Errorf("no Deployment %s", name)
			continue
		}
		spec := d.Spec.Template.Spec
		if len(spec.Containers) != 1 {
			t.Fatalf("%s has %d containers", name, len(spec.Containers))
		}
		c := spec.Containers[0]
		if !slices.Equal(c.Args, []string{cmd}) || len(c.Command) > 0 {
			t.Errorf("%s runs command %v args %v, want the image's entrypoint with [%s]", name, c.Command, c.Args, cmd)
		}
		replicas := int32(1)
		if d.Spec.Replicas != nil {
			replicas = *d.Spec.Replicas
		}
		switch cmd {
		case "cdc":
			if replicas != 1 || d.Spec.Strategy.Type != appsv1.RecreateDeploymentStrategyType {
				t.Errorf("%s: %d replicas, strategy %q; one reader per slot, Recreate so that two never overlap", name, replicas, d.Spec.Strategy.Type)
			}
		case "gateway":
			if replicas < 2 {
				t.Errorf("%s: %d replicas; at least 2", name, replicas)
			}
			sel, err := metav1.LabelSelectorAsSelector(d.Spec.Selector)
			if err != nil || !sel.Matches(labels.Set(d.Spec.Template.Labels)) {
				t.Errorf("%s's selector does not select its own pods", name)
			}
			svc, ok := m.services[name]
			if !ok || !labels.SelectorFromSet(svc.Spec.Selector).Matches(labels.Set(d.Spec.Template.Labels)) || len(svc.Spec.Selector) == 0 {
				t.Errorf("no Service selects the gateway's pods")
			} else if len(svc.Spec.Ports) != 1 || svc.Spec.Ports[0].TargetPort.String() != "http" {
				t.Errorf("Service %s targets %v, want the container port http", name, svc.Spec.Ports)
			}
			pdb, ok := m.pdbs[name]
			if !ok {
				t.Errorf("no PodDisruptionBudget for the gateways")
			} else {
				psel, err := metav1.LabelSelectorAsSelector(pdb.Spec.Selector)
				if err != nil || !psel.Matches(labels.Set(d.Spec.Template.Labels)) {
					t.Errorf("PodDisruptionBudget %s does not select the gateway's pods", name)
				}
				if pdb.Spec.MinAvailable == nil || pdb.Spec.MinAvailable.IntValue() < 1 || pdb.Spec.MinAvailable.IntValue() >= int(replicas) {
					t.Errorf("PodDisruptionBudget %s: minAvailable %v, want at least 1 and fewer than %d replicas (or drains block)", name, pdb.Spec.MinAvailable, replicas)
				}
			}
		}

		env := m.podEnv(t, c)
		checkVariables(t, name, slices.Collect(mapKeys(env)))
		host, port, err := net.SplitHostPort(env["TABLECAST_HTTP_ADDR"])
		if err != nil || host != "0.0.0.0" {
			t.Errorf("%s: TABLECAST_HTTP_ADDR %q; want 0.0.0.0:port, so that probes of the pod's IP are answered", name, env["TABLECAST_HTTP_ADDR"])
		}
		var httpPort int32
		for _, p := range c.Ports {
			if p.Name == "http" {
				httpPort = p.ContainerPort
			}
		}
		if fmt.Sprint(httpPort) != port {
			t.Errorf("%s: container port http is %d and tablecast listens on %s", name, httpPort, port)
		}
		for _, p := range []struct {
			what, path string
			probe      *corev1.Probe
		}{{"startupProbe", "/healthz", c.StartupProbe}, {"livenessProbe", "/healthz", c.LivenessProbe}, {"readinessProbe", "/readyz", c.ReadinessProbe}} {
			switch {
			case p.probe == nil || p.probe.HTTPGet == nil:
				t.Errorf("%s: no HTTP %s", name, p.what)
			case p.probe.HTTPGet.Path != p.path || p.probe.HTTPGet.Port.String() != "http":
				t.Errorf("%s: %s on %s port %s, want %s on http", name, p.what, p.probe.HTTPGet.Path, p.probe.HTTPGet.Port.String(), p.path)
			case p.probe.TimeoutSeconds != 0 && p.probe.TimeoutSeconds < 2:
				t.Errorf("%s: %s times out after %ds", name, p.what, p.probe.TimeoutSeconds)
			}
		}

		psc, sc := spec.SecurityContext, c.SecurityContext
		switch {
		case psc == nil || psc.RunAsNonRoot == nil || !*psc.RunAsNonRoot || psc.RunAsUser == nil || *psc.RunAsUser == 0:
			t.Errorf("%s: the pod does not run as a non-root user", name)
		case sc == nil || sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation || sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem ||
			sc.Capabilities == nil || !slices.Contains(sc.Capabilities.Drop, "ALL"):
			t.Errorf("%s: want allowPrivilegeEscalation false, readOnlyRootFilesystem, capabilities dropped", name)
		}
		for _, r := range []corev1.ResourceName{corev1.ResourceCPU, corev1.ResourceMemory} {
			req, lim := c.Resources.Requests[r], c.Resources.Limits[r]
			if req.IsZero() || lim.IsZero() || req.Cmp(lim) > 0 {
				t.Errorf("%s: %s request %s and limit %s; want both, request ≤ limit", name, r, req.String(), lim.String())
			}
		}

		// tablecast's own check of the configuration: healthcheck loads
		// and validates every variable before it connects, so with
		// nothing listening the only acceptable failure is the refused
		// connection.
		vars := systemEnv()
		for k, v := range env {
			if strings.HasPrefix(k, "TABLECAST_") {
				if k == "TABLECAST_HTTP_ADDR" {
					v = freeAddr(t)
				}
				vars = append(vars, k+"="+v)
			}
		}
		if code, out := run(t, time.Minute, vars, bin, "healthcheck", "--timeout", "5s"); code != 1 || !strings.Contains(out, "connection refused") {
			t.Errorf("%s: tablecast refuses the manifests' configuration (exit %d):\n%s", name, code, out)
		}
	}
}
