package localcluster

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/switchyard-serving/switchyard/coordinator"
	"github.com/switchyard-serving/switchyard/internal/cluster"
	"github.com/switchyard-serving/switchyard/internal/embedetcd"
	pb "github.com/switchyard-serving/switchyard/proto/switchyard/v1"
	trunknode "github.com/switchyard-serving/switchyard/trunk-node"
)

// etcdChildEnv makes the test binary an etcd server: "<dir>|<client
// host:port>|<peer host:port>" (the standard re-exec pattern: the test runs
// etcd as its own process without a separate binary).
const etcdChildEnv = "SWITCHYARD_TEST_ETCD_CHILD"

// runEtcdChild serves the embedded etcd described by spec until SIGTERM or
// SIGINT, printing "ready" once it serves; it is the child's whole life.
func runEtcdChild(spec string) int {
	parts := strings.Split(spec, "|")
	if len(parts) != 3 {
		fmt.Fprintf(os.Stderr, "%s=%q: want dir|client|peer\n", etcdChildEnv, spec)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	s, err := embedetcd.Start(ctx, embedetcd.Config{Dir: parts[0], ClientAddr: parts[1], PeerAddr: parts[2]})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	fmt.Println("ready")
	<-ctx.Done()
	s.Close()
	return 0
}

// etcdProc is an etcd server in a process of its own: Debian's etcd (the
// etcd-server package) when it is on PATH, else this test binary re-executed
// as the embedded server. Restarts reuse the data folder and addresses.
type etcdProc struct {
	t            *testing.T
	dir          string
	client, peer string // host:port
	bin          string // the etcd binary, "" for the re-executed test binary
	cmd          *exec.Cmd
	exited       chan struct{}
}

func startEtcdProc(t *testing.T) *etcdProc {
	t.Helper()
	e := &etcdProc{t: t, dir: filepath.Join(t.TempDir(), "etcd"), client: freeAddr(t), peer: freeAddr(t)}
	if p, err := exec.LookPath("etcd"); err == nil && os.Getenv("SWITCHYARD_TEST_ETCD_EMBEDDED") == "" {
		e.bin = p
	}
	if err := e.start(); err != nil {
		t.Skipf("cannot run etcd as a process here: %v", err)
	}
	t.Cleanup(func() {
		e.kill()
		if b, err := os.ReadFile(e.log()); err == nil && t.Failed() {
			t.Logf("etcd's log (last 4 KiB):\n%s", b[max(0, len(b)-4096):])
		}
	})
	return e
}

// log is the file etcd's stderr goes to (shown when the test fails).
func (e *etcdProc) log() string { return e.dir + ".log" }

func (e *etcdProc) endpoint() string { return "http://" + e.client }

func (e *etcdProc) what() string {
	if e.bin != "" {
		return e.bin
	}
	return "the test binary re-executed as the embedded etcd"
}

// start launches the process and waits until etcd answers.
func (e *etcdProc) start() error {
	if e.bin != "" {
		peer := "http://" + e.peer
		e.cmd = exec.Command(e.bin, "--name", "sy", "--data-dir", e.dir,
			"--listen-client-urls", e.endpoint(), "--advertise-client-urls", e.endpoint(),
			"--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
			"--initial-cluster", "sy="+peer, "--log-level", "error")
	} else {
		e.cmd = exec.Command(os.Args[0], "-test.run=^$")
		e.cmd.Env = append(os.Environ(), etcdChildEnv+"="+strings.Join([]string{e.dir, e.client, e.peer}, "|"))
	}
	logf, err := os.OpenFile(e.log(), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	defer logf.Close()
	e.cmd.Stderr = logf
	out, err := e.cmd.StdoutPipe()
	if err != nil {
		return err
	}
	if err := e.cmd.Start(); err != nil {
		return err
	}
	e.exited = make(chan struct{})
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
		}
		e.cmd.Wait()
		close(e.exited)
	}()
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{e.endpoint()}, DialTimeout: 2 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		return err
	}
	defer cli.Close()
	deadline := time.Now().Add(30 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_, err := cli.Get(ctx, "health")
		cancel()
		if err == nil {
			return nil
		}
		select {
		case <-e.exited:
			return fmt.Errorf("%s exited: %w", e.what(), err)
		default:
		}
		if time.Now().After(deadline) {
			e.kill()
			return fmt.Errorf("%s not serving after 30s: %w", e.what(), err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (e *etcdProc) signal(sig syscall.Signal) {
	e.t.Helper()
	if err := e.cmd.Process.Signal(sig); err != nil {
		e.t.Fatalf("signal %v to etcd: %v", sig, err)
	}
}

// kill ends the process at once (SIGKILL works on a stopped process too).
func (e *etcdProc) kill() {
	if e.cmd == nil || e.cmd.Process == nil {
		return
	}
	select {
	case <-e.exited:
		return
	default:
	}
	e.cmd.Process.Kill()
	<-e.exited
}

// The control plane heals after an outage of a real etcd process under load:
// etcd is frozen (SIGSTOP: connections hang, nothing answers) for 10 s, then
// killed and started again on its data. The data plane serves throughout;
// every node registers again and stays registered; a crashed expert node is
// then re-placed (every expert back on two live nodes) and generation goes
// on with outputs identical to the golden ones; finally, with etcd frozen
// again, closing every node (what SIGTERM does) still completes promptly.
func TestControlPlaneHealsWithEtcdProcess(t *testing.T) {
	if testing.Short() {
		t.Skip("about 40 s: etcd outage, re-registration, repair (run without -short)")
	}
	begin := time.Now()
	etcd := startEtcdProc(t)
	t.Logf("etcd: %s at %s", etcd.what(), etcd.endpoint())

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	c, err := Start(ctx, Options{ModelPath: filepath.Join(fixtureDir(t), "hf"), ExpertNodes: 3, EtcdEndpoints: []string{etcd.endpoint()},
		Trunk: func(tc *trunknode.Config) {
			tc.LeaseTTL = 2
			tc.LoadInterval = 200 * time.Millisecond
			tc.Dispatch.Deadline = 45 * time.Second
			tc.Dispatch.WireDType = pb.WireDType_WIRE_DTYPE_F32 // see startFaultCluster
		},
		Coordinator: func(lc *coordinator.Config) { lc.PlanInterval = 500 * time.Millisecond }})
	if err != nil {
		t.Fatal(err)
	}
	closed := false
	t.Cleanup(func() {
		if !closed {
			c.Close()
		}
	})
	registered := func(role string) int {
		rctx, rcancel := context.WithTimeout(context.Background(), time.Second)
		defer rcancel()
		ns, err := cluster.ListNodes(rctx, c.Client(), role)
		if err != nil {
			return -1
		}
		return len(ns)
	}
	all := func() bool {
		return registered(cluster.RoleExpert) == 3 && registered(cluster.RoleTrunk) == 1 && registered(cluster.RoleCoordinator) == 1
	}
	waitFor(t, "every node registered", 20*time.Second, all)

	stop := make(chan struct{})
	lg := startLoad(t, c, 4, stop)
	waitFor(t, "load running", 20*time.Second, func() bool { return lg.completed() >= 4 })

	// The outage: frozen for 10 s, then killed and started again.
	etcd.signal(syscall.SIGSTOP)
	frozen := time.Now()
	n := lg.completed()
	time.Sleep(10 * time.Second)
	if got := lg.completed() - n; got < 4 {
		t.Errorf("%d requests completed while etcd was frozen: the data plane must keep serving", got)
	}
	etcd.kill()
	if err := etcd.start(); err != nil {
		t.Fatalf("restarting etcd: %v", err)
	}
	restarted := time.Now()
	t.Logf("etcd frozen %v, then restarted; %d requests completed during the outage", restarted.Sub(frozen).Round(time.Millisecond), lg.completed()-n)
	waitFor(t, "every node registered again", 30*time.Second, all)
	t.Logf("every node registered again %v after the restart", time.Since(restarted).Round(time.Millisecond))
	time.Sleep(3 * 2 * time.Second) // three lease TTLs: registered for good, not on revived leases
	if !all() {
		t.Fatalf("three lease TTLs after the restart: %d experts, %d trunks, %d coordinators registered; want 3, 1, 1",
			registered(cluster.RoleExpert), registered(cluster.RoleTrunk), registered(cluster.RoleCoordinator))
	}

	// The repair: a crashed expert node is re-placed by the coordinator,
	// which had to win its election again after the outage.
	v0 := tableVersion(t, c)
	killed := time.Now()
	if err := c.CrashExpert("expert-1"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "re-placement after the outage", 30*time.Second, func() bool {
		tb, err := cluster.LoadTable(context.Background(), c.Client())
		if err != nil || tb.Version <= v0 {
			return false
		}
		_, held := tb.Addr("expert-1")
		return !held && singleReplica(tb) == ""
	})
	repaired := time.Since(killed)
	n = lg.completed()
	waitFor(t, "load continuing after the repair", 20*time.Second, func() bool { return lg.completed() >= n+4 })
	t.Logf("expert-1 crashed: re-placed in %v; longest gap between tokens %v", repaired.Round(time.Millisecond), lg.maxGap(killed, time.Now()))
	close(stop)
	lg.check(t)

	// Shutdown never waits on etcd: freeze it again and close every node.
	etcd.signal(syscall.SIGSTOP)
	start := time.Now()
	done := make(chan struct{})
	go func() { c.Close(); close(done) }()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("closing the nodes with etcd frozen did not finish in 30 s")
	}
	closed = true
	took := time.Since(start)
	t.Logf("every node closed in %v with etcd frozen; the whole test took %v", took.Round(time.Millisecond), time.Since(begin).Round(time.Millisecond))
	if took > 15*time.Second {
		t.Errorf("closing the nodes took %v with etcd frozen: deregistration must not block shutdown", took)
	}
	etcd.kill()
}
