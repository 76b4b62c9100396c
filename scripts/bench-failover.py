#!/usr/bin/env python3
"""Failover time of the cluster manager, measured from the client's side: tandem heartbeatd, and real Heartbeat 3
as the anchor, in the same namespace lab with the same method. A benchmark, not a test: it prints figures.

    sudo scripts/bench-failover.py --tandem .build/release/tandem [--impl tandem heartbeat] [--trials 10]
                                   [--deadtime 10] [--aggressive] [--stress-seconds 120]

The lab: namespaces node1, node2 and a client; two heartbeat links (eth1 bcast, eth2 ucast) and a service network
(eth3) bridged to the client; 10.215.0.0/16, private to these namespaces. The group is
    node1 marker IPaddr2::10.215.3.100/24/eth3 hbservice::10.215.3.100
where `marker` stamps the time its start runs (takeover start) and `hbservice` answers with its node's name.
auto_failback is off, so that each trial kills the node that holds the group and the direction alternates.

One trial: kill -9 every process of the active node and take its links down (power loss), then poll, one thread per
phase (each probe takes a few milliseconds: a CLI call, `ip addr`, a TCP connect from the client namespace):
  detection  the survivor's cl_status says the dead node is dead
  takeover   `marker start` ran on the survivor
  vip        the floating address is on the survivor's eth3
  service    the client gets an answer from the survivor through the floating address
each as time since the kill. Then the dead node is powered on, restarted, and left to settle.

--aggressive looks for the shortest keepalive/deadtime pair (from 500ms/2s down to 50ms/250ms) with no false failover
while both cores are busy for --stress-seconds (both daemons running, load from stress-ng or busy loops), then runs the
trials with that pair instead of --keepalive/--deadtime.
"""

import argparse
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

PREFIX = "bf"
VIP = "10.215.3.100"
PORT = 7000
HEARTBEAT = "/usr/libexec/heartbeat/heartbeat"


def sh(*args, check=True, capture=False):
    result = subprocess.run(list(args), stdout=subprocess.PIPE if capture else subprocess.DEVNULL,
                            stderr=subprocess.PIPE if capture else subprocess.DEVNULL, text=True)
    if check and result.returncode != 0:
        raise SystemExit(f"failed: {' '.join(args)}: {result.stderr if capture else ''}")
    return result.stdout if capture else result.returncode


class Lab:
    def __init__(self, impl, tandem, keepalive, deadtime):
        self.impl, self.tandem = impl, tandem
        self.keepalive, self.deadtime = keepalive, deadtime
        self.root = tempfile.mkdtemp(prefix="tandem-bench-failover-")
        self.nodes = ["node1", "node2"]
        self.namespaces = {n: f"{PREFIX}{n[-1]}" for n in self.nodes}
        self.client = f"{PREFIX}c"
        self.daemons = {}  # node -> Popen
        self.made = []

    # --- network -------------------------------------------------------------------------------------------
    def build(self):
        for ns in list(self.namespaces.values()) + [self.client]:
            sh("ip", "netns", "add", ns)
            self.made.append(ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        a, b = self.namespaces["node1"], self.namespaces["node2"]
        for link in (1, 2):
            sh("ip", "link", "add", f"{PREFIX}a{link}", "netns", a, "type", "veth", "peer", "name", f"{PREFIX}b{link}",
               "netns", b)
            for ns, end, index in ((a, "a", 1), (b, "b", 2)):
                sh("ip", "-n", ns, "link", "set", f"{PREFIX}{end}{link}", "name", f"eth{link}")
                sh("ip", "-n", ns, "addr", "add", f"10.215.{link}.{index}/24", "dev", f"eth{link}")
                sh("ip", "-n", ns, "link", "set", f"eth{link}", "up")
        sh("ip", "-n", self.client, "link", "add", "br0", "type", "bridge")
        sh("ip", "-n", self.client, "addr", "add", "10.215.3.10/24", "dev", "br0")
        sh("ip", "-n", self.client, "link", "set", "br0", "up")
        for index, node in enumerate(self.nodes, start=1):
            ns = self.namespaces[node]
            sh("ip", "link", "add", f"{PREFIX}s{index}", "netns", ns, "type", "veth", "peer", "name", f"{PREFIX}p{index}",
               "netns", self.client)
            sh("ip", "-n", ns, "link", "set", f"{PREFIX}s{index}", "name", "eth3")
            sh("ip", "-n", ns, "addr", "add", f"10.215.3.{index}/24", "dev", "eth3")
            sh("ip", "-n", ns, "link", "set", "eth3", "up")
            sh("ip", "-n", self.client, "link", "set", f"{PREFIX}p{index}", "master", "br0")
            sh("ip", "-n", self.client, "link", "set", f"{PREFIX}p{index}", "up")
        self.write_configuration()

    def write_configuration(self):
        with open(f"{self.root}/service.py", "w") as f:
            f.write(
                "import socket, sys\n"
                "s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
                f"s.bind((sys.argv[1], {PORT})); s.listen(64)\n"
                "while True:\n"
                "    c, _ = s.accept(); c.sendall((sys.argv[2] + '\\n').encode()); c.close()\n")
        for node in self.nodes:
            d = self.directory(node)
            for sub in ("conf/resource.d", "run", "state", "lib", "varrun"):
                os.makedirs(f"{d}/{sub}", exist_ok=True)
            if self.impl == "heartbeat":
                # Heartbeat finds IPaddr2 and friends in /etc/ha.d/resource.d, which the node's folder replaces.
                for name in os.listdir("/etc/ha.d/resource.d"):
                    shutil.copy2(f"/etc/ha.d/resource.d/{name}", f"{d}/conf/resource.d/{name}")
                shutil.copy2("/etc/ha.d/shellfuncs", f"{d}/conf/shellfuncs")
                shutil.copytree("/etc/ha.d/rc.d", f"{d}/conf/rc.d", dirs_exist_ok=True)
                shutil.copy2("/etc/ha.d/harc", f"{d}/conf/harc")
            with open(f"{d}/conf/ha.cf", "w") as f:
                f.write(f"logfile {d}/ha-log\nkeepalive {self.keepalive}\nwarntime {self.deadtime_warn()}\n"
                        f"deadtime {self.deadtime}\ninitdead {self.initdead()}\nudpport 6950\nbcast eth1\n"
                        "ucast eth2 10.215.2.1\nucast eth2 10.215.2.2\nauto_failback off\nnode node1\nnode node2\n")
                if self.impl == "heartbeat":
                    f.write("crm off\nuse_logd no\nlogfacility none\n")
            with open(f"{d}/conf/authkeys", "w") as f:
                f.write("auth 1\n1 sha1 bench-secret\n")
            os.chmod(f"{d}/conf/authkeys", 0o600)
            with open(f"{d}/conf/haresources", "w") as f:
                f.write(f"node1 marker IPaddr2::{VIP}/24/eth3 hbservice::{VIP}\n")
            self.script(node, "marker", f'case "$1" in start) date +%s.%N > {d}/marker-started;; esac; exit 0')
            self.script(node, "hbservice", f"""pidfile={d}/service.pid
case "$2" in
start) if [ -f $pidfile ] && kill -0 $(cat $pidfile) 2>/dev/null; then exit 0; fi
  setsid python3 {self.root}/service.py "$1" {node} </dev/null >/dev/null 2>&1 & echo $! > $pidfile
  for i in $(seq 100); do python3 -c "import socket; socket.create_connection(('$1', {PORT}), 0.2)" 2>/dev/null && exit 0; sleep 0.05; done; exit 1;;
stop) [ -f $pidfile ] && kill $(cat $pidfile) 2>/dev/null; rm -f $pidfile; exit 0;;
status) [ -f $pidfile ] && kill -0 $(cat $pidfile) 2>/dev/null && echo running || echo stopped;;
esac""")

    def deadtime_warn(self):
        return f"{self.deadtime_ms() // 2}ms"

    def deadtime_ms(self):
        text = self.deadtime
        return int(text[:-2]) if text.endswith("ms") else int(float(text) * 1000)

    def initdead(self):
        return f"{max(self.deadtime_ms() * 2, 4000)}ms"

    def script(self, node, name, body):
        path = f"{self.directory(node)}/conf/resource.d/{name}"
        with open(path, "w") as f:
            f.write("#!/bin/sh\n" + body + "\n")
        os.chmod(path, 0o755)

    def directory(self, node):
        return f"{self.root}/{node}"

    # --- daemons -------------------------------------------------------------------------------------------
    def start(self, node):
        d, ns = self.directory(node), self.namespaces[node]
        log = open(f"{d}/daemon.out", "a")
        if self.impl == "tandem":
            command = ["ip", "netns", "exec", ns, self.tandem, "heartbeatd", "--foreground", "--config-dir", f"{d}/conf",
                       "--run-dir", f"{d}/run", "--state-dir", f"{d}/state", "--node", node]
        else:
            # Heartbeat reads /etc/ha.d and keeps state in /var/lib/heartbeat and /var/run: give it the node's own,
            # in a mount and UTS namespace of its own (its node name is uname -n).
            inner = (f"mount --bind {d}/conf /etc/ha.d && mount --bind {d}/lib /var/lib/heartbeat && "
                     f"mount --bind {d}/varrun /var/run && hostname {node} && exec {HEARTBEAT}")
            command = ["ip", "netns", "exec", ns, "unshare", "-m", "-u", "--propagation", "private", "sh", "-c", inner]
            # What Debian's package makes under /var/lib/heartbeat and /run, which the bind mounts hide.
            for sub in ("lib/cores/root", "lib/cores/hacluster", "lib/cores/nobody", "varrun/heartbeat/ccm",
                        "varrun/heartbeat/rsctmp", "varrun/resource-agents", "varrun/lock"):
                os.makedirs(f"{d}/{sub}", exist_ok=True)
            for sub in ("lib", "lib/cores/hacluster", "varrun/heartbeat", "varrun/heartbeat/ccm"):
                shutil.chown(f"{d}/{sub}", "hacluster", "haclient")
        self.daemons[node] = subprocess.Popen(command, stdout=log, stderr=log)

    def kill_node(self, node):
        """Power loss: kill -9 of every process in the node's network namespace (the daemon however it forked,
        its agents, its service; all started by this script), then its links go down."""
        process = self.daemons.pop(node, None)
        if self.namespaces[node] not in self.made:
            return
        out = sh("ip", "netns", "pids", self.namespaces[node], capture=True, check=False) or ""
        for pid in (int(p) for p in out.split()):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if process:
            process.wait()
        self.kill_service(node)
        for link in ("eth1", "eth2", "eth3"):
            sh("ip", "-n", self.namespaces[node], "link", "set", link, "down", check=False)

    def kill_service(self, node):
        path = f"{self.directory(node)}/service.pid"
        try:
            os.kill(int(open(path).read().strip()), signal.SIGKILL)
            os.unlink(path)
        except (OSError, ValueError):
            pass

    def power_on(self, node):
        ns = self.namespaces[node]
        sh("ip", "-n", ns, "addr", "del", f"{VIP}/24", "dev", "eth3", check=False)
        for link in ("eth1", "eth2", "eth3"):
            sh("ip", "-n", ns, "link", "set", link, "up")

    # --- looking -------------------------------------------------------------------------------------------
    def node_status(self, observer, node):
        d, ns = self.directory(observer), self.namespaces[observer]
        if self.impl == "tandem":
            command = ["ip", "netns", "exec", ns, self.tandem, "cl-status", "nodestatus", node, "--run-dir", f"{d}/run"]
        else:
            command = ["ip", "netns", "exec", ns, "unshare", "-m", "sh", "-c",
                       f"mount --bind {d}/varrun /var/run && exec cl_status nodestatus {node}"]
        return subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True).stdout.strip()

    def holds_vip(self, node):
        out = sh("ip", "-n", self.namespaces[node], "-o", "-4", "addr", "show", "dev", "eth3", capture=True, check=False)
        return f" {VIP}/" in (out or "")

    def answering(self):
        probe = (f"import socket\ntry:\n s=socket.create_connection(('{VIP}',{PORT}),0.3); print(s.recv(64).decode().strip())\n"
                 "except OSError: pass")
        return subprocess.run(["ip", "netns", "exec", self.client, "python3", "-c", probe], stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, text=True).stdout.strip()

    def tear_down(self):
        # Every process in the lab's namespaces was started by this script (Heartbeat forks away from its parent):
        # kill them all before the namespaces go, or they would live on in namespaces no one can enter.
        for node in self.nodes:
            self.kill_node(node)
        for node in self.nodes:
            self.kill_service(node)
        for ns in self.made:
            sh("ip", "netns", "del", ns, check=False)
        if os.environ.get("BENCH_KEEP_LOGS"):
            print(f"  logs kept in {self.root}")
        else:
            shutil.rmtree(self.root, ignore_errors=True)


def wait_for(condition, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False


def trial(lab, active):
    survivor = "node2" if active == "node1" else "node1"
    marker = f"{lab.directory(survivor)}/marker-started"
    if os.path.exists(marker):
        os.unlink(marker)
    # One poller per phase, so that a slow probe (a CLI call, a TCP connect) does not delay the others' clocks.
    probes = {
        "detection": lambda: lab.node_status(survivor, active) == "dead",
        "takeover": lambda: os.path.exists(marker),
        "vip": lambda: lab.holds_vip(survivor),
        "service": lambda: lab.answering() == survivor,
    }
    phases = {}

    def poll(name, probe):
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if probe():
                phases[name] = time.time() - killed_at
                return
            time.sleep(0.005)

    killed_at = time.time()
    lab.kill_node(active)
    pollers = [threading.Thread(target=poll, args=item) for item in probes.items()]
    for poller in pollers:
        poller.start()
    for poller in pollers:
        poller.join()
    if "takeover" in phases:
        # The marker holds the time its start ran, which is more exact than when the poller saw the file.
        phases["takeover"] = float(open(marker).read().strip()) - killed_at
    lab.power_on(active)
    lab.start(active)
    settled = wait_for(lambda: lab.node_status(survivor, active) in ("active", "up"), 120)
    time.sleep(max(2.0, lab.deadtime_ms() / 1000))
    return survivor, phases, settled


def run_trials(impl, tandem, keepalive, deadtime, trials):
    lab = Lab(impl, tandem, keepalive, deadtime)
    results = []
    try:
        lab.build()
        lab.start("node1")
        lab.start("node2")
        if not wait_for(lambda: lab.answering() == "node1", 120):
            print(f"  {impl}: the group never came up on node1; see {lab.root}")
            return None
        time.sleep(2)
        active = "node1"
        for number in range(trials):
            survivor, phases, settled = trial(lab, active)
            results.append(phases)
            print(f"  trial {number + 1}: {active} killed -> {survivor}: " +
                  " ".join(f"{k}={v:.2f}s" for k, v in sorted(phases.items(), key=lambda p: p[1])) +
                  ("" if settled else " (the killed node did not rejoin)"), flush=True)
            active = survivor
    finally:
        lab.tear_down()
    return results


def false_failovers(impl, tandem, keepalive, deadtime, seconds):
    """Both daemons up, both cores busy for `seconds`: how many times a node declared its live peer dead."""
    lab = Lab(impl, tandem, keepalive, deadtime)
    try:
        lab.build()
        lab.start("node1")
        lab.start("node2")
        if not wait_for(lambda: lab.answering() == "node1", 120):
            return None
        stress = shutil.which("stress-ng")
        load = ([subprocess.Popen([stress, "--cpu", "2", "--timeout", f"{seconds}s"], stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)] if stress else
                [subprocess.Popen([sys.executable, "-c", f"import time\nend=time.time()+{seconds}\nwhile time.time()<end: pass"])
                 for _ in range(2)])
        for process in load:
            process.wait()
        deaths = sum(open(f"{lab.directory(n)}/ha-log").read().count(": is dead") for n in lab.nodes)
        return deaths
    finally:
        lab.tear_down()


def summarize(label, results):
    print(f"\n{label}")
    print(f"  {'phase':<10} {'min':>7} {'median':>7} {'max':>7}  (seconds from kill -9, {len(results)} trials)")
    for phase in ("detection", "takeover", "vip", "service"):
        values = [r[phase] for r in results if phase in r]
        if values:
            print(f"  {phase:<10} {min(values):7.2f} {statistics.median(values):7.2f} {max(values):7.2f}"
                  + ("" if len(values) == len(results) else f"  ({len(results) - len(values)} trials never got there)"))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tandem", default=".build/release/tandem")
    parser.add_argument("--impl", nargs="+", default=["tandem", "heartbeat"], choices=["tandem", "heartbeat"])
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--keepalive", default="1")
    parser.add_argument("--deadtime", default="10")
    parser.add_argument("--aggressive", action="store_true")
    parser.add_argument("--stress-seconds", type=int, default=120)
    arguments = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root: the lab makes network namespaces")
    arguments.tandem = os.path.abspath(arguments.tandem)
    for impl in arguments.impl:
        if impl == "heartbeat" and not os.access(HEARTBEAT, os.X_OK):
            raise SystemExit(f"{HEARTBEAT} not found: apt-get install heartbeat")
        if impl == "tandem" and not os.access(arguments.tandem, os.X_OK):
            raise SystemExit(f"{arguments.tandem} not found: swift build -c release --product tandem")

    settings = [(arguments.keepalive, arguments.deadtime)]
    if arguments.aggressive:
        for keepalive, deadtime in (("500ms", "2"), ("250ms", "1"), ("100ms", "500ms"), ("50ms", "250ms")):
            clean = True
            for impl in arguments.impl:
                deaths = false_failovers(impl, arguments.tandem, keepalive, deadtime, arguments.stress_seconds)
                print(f"false-failover check {impl} keepalive {keepalive} deadtime {deadtime}, "
                      f"{arguments.stress_seconds}s with both cores busy: {deaths} false 'is dead'", flush=True)
                clean = clean and deaths == 0
            if not clean:
                break
            settings = [(keepalive, deadtime)]
        if settings == [(arguments.keepalive, arguments.deadtime)]:
            print("no setting shorter than the given one passed the false-failover check")
    for keepalive, deadtime in settings:
        for impl in arguments.impl:
            print(f"\n{impl}: keepalive {keepalive}, deadtime {deadtime}, {arguments.trials} trials", flush=True)
            results = run_trials(impl, arguments.tandem, keepalive, deadtime, arguments.trials)
            if results:
                summarize(f"{impl}, keepalive {keepalive}, deadtime {deadtime}", results)


if __name__ == "__main__":
    main()
