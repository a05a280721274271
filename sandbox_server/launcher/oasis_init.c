/*
 * oasis-init: the first process of every execution.
 *
 *   oasis-init [--pidns] -- PROGRAM [ARG...]
 *
 * It makes itself a child subreaper (and, with --pidns, gives PROGRAM a pid
 * namespace of its own), starts PROGRAM, and relays PROGRAM's exit status as
 * its own: the same exit code, or death by the same signal. In a namespace,
 * PROGRAM runs as pid 2 under a minimal init (pid 1), because the kernel
 * drops the signals a namespace's init sends itself (PROGRAM could not kill
 * itself) and orphans would be left as zombies. When PROGRAM ends,
 * or when oasis-init gets SIGTERM, every process left in the execution's tree
 * is killed, including ones that called setsid: orphans are reparented to this
 * subreaper, and in a pid namespace the kernel kills them all with its init.
 *
 * The server never forks itself (gRPC and fork do not mix); it execs this.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

static volatile sig_atomic_t kill_requested = 0;

static void on_term(int sig) {
    (void)sig;
    kill_requested = 1;
}

/* SIGKILL every direct child; returns how many were signalled. */
static int kill_children(pid_t self) {
    DIR *proc = opendir("/proc");
    if (!proc) return 0;
    int count = 0;
    struct dirent *entry;
    while ((entry = readdir(proc)) != NULL) {
        char path[300], buf[512];
        if (entry->d_name[0] < '1' || entry->d_name[0] > '9') continue;
        snprintf(path, sizeof path, "/proc/%s/stat", entry->d_name);
        FILE *f = fopen(path, "re");
        if (!f) continue;
        size_t n = fread(buf, 1, sizeof buf - 1, f);
        fclose(f);
        buf[n] = '\0';
        /* The command name may contain spaces and parens: parse after the last ')'. */
        char *end = strrchr(buf, ')');
        int ppid;
        char state;
        if (end && sscanf(end + 1, " %c %d", &state, &ppid) == 2 && ppid == self) {
            kill((pid_t)atoi(entry->d_name), SIGKILL);
            count++;
        }
    }
    closedir(proc);
    return count;
}

/* Kill and reap everything below us until nothing is left. */
static void kill_tree(pid_t self) {
    for (int round = 0; round < 10000; round++) {
        kill_children(self);
        pid_t reaped;
        int any = 0;
        while ((reaped = waitpid(-1, NULL, WNOHANG)) > 0) any = 1;
        if (reaped < 0 && errno == ECHILD) return;
        if (!any) usleep(1000);
    }
}

static void exit_like(int status) {
    if (WIFEXITED(status)) _exit(WEXITSTATUS(status));
    int sig = WIFSIGNALED(status) ? WTERMSIG(status) : SIGKILL;
    struct rlimit no_core = {0, 0};
    setrlimit(RLIMIT_CORE, &no_core);
    signal(sig, SIG_DFL);
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, sig);
    sigprocmask(SIG_UNBLOCK, &set, NULL);
    kill(getpid(), sig);
    _exit(128 + sig);
}

static void default_signals(void) {
    signal(SIGTERM, SIG_DFL);
    signal(SIGINT, SIG_DFL);
    signal(SIGHUP, SIG_DFL);
}

/* pid 1 of the execution's namespace: runs PROGRAM as pid 2, reaps every
 * process that ends, and reports PROGRAM's wait status through `report` (a
 * death by signal cannot be relayed by dying the same way: pid 1 cannot
 * signal itself). Its exit makes the kernel kill what is left inside. */
static void namespace_init(char **program, int report) {
    default_signals();
    pid_t main_pid = fork();
    if (main_pid < 0) { perror("oasis-init: fork"); _exit(125); }
    if (main_pid == 0) {
        execv(program[0], program);
        fprintf(stderr, "oasis-init: cannot run %s: %s\n", program[0], strerror(errno));
        _exit(127);
    }
    for (;;) {
        int status;
        pid_t done = waitpid(-1, &status, 0);
        if (done == main_pid) {
            ssize_t ignored = write(report, &status, sizeof status);
            (void)ignored;
            _exit(0);
        }
        if (done < 0 && errno != EINTR) _exit(125);
    }
}

int main(int argc, char **argv) {
    int pidns = 0;
    int i = 1;
    for (; i < argc; i++) {
        if (strcmp(argv[i], "--pidns") == 0) pidns = 1;
        else if (strcmp(argv[i], "--") == 0) { i++; break; }
        else { fprintf(stderr, "oasis-init: unknown option %s\n", argv[i]); return 125; }
    }
    if (i >= argc) { fprintf(stderr, "oasis-init: no program given\n"); return 125; }

    pid_t self = getpid();
    /* If the server dies, take the whole execution down with us. */
    prctl(PR_SET_PDEATHSIG, SIGTERM);
    if (prctl(PR_SET_CHILD_SUBREAPER, 1) != 0) { perror("oasis-init: subreaper"); return 125; }
    if (pidns && unshare(CLONE_NEWPID) != 0) { perror("oasis-init: pid namespace"); return 125; }

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_term;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGHUP, &sa, NULL);

    /* The namespace init writes PROGRAM's wait status here. */
    int report[2] = {-1, -1};
    if (pidns && pipe2(report, O_CLOEXEC) != 0) { perror("oasis-init: pipe"); return 125; }

    pid_t child = fork();
    if (child < 0) { perror("oasis-init: fork"); return 125; }
    if (child == 0) {
        /* Die with us, even if we are SIGKILLed before we can clean up. */
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        /* In a new pid namespace the parent lies outside it and shows as 0. */
        pid_t parent = getppid();
        if (parent != self && parent != 0) _exit(125);
        if (pidns) {
            close(report[0]);
            namespace_init(&argv[i], report[1]);
        }
        default_signals();
        execv(argv[i], &argv[i]);
        fprintf(stderr, "oasis-init: cannot run %s: %s\n", argv[i], strerror(errno));
        _exit(127);
    }

    if (pidns) close(report[1]);
    int status = 0;
    for (;;) {
        if (kill_requested) kill(child, SIGKILL);
        pid_t done = waitpid(child, &status, 0);
        if (done == child) break;
        if (done < 0 && errno != EINTR) { status = 0; break; }
    }
    if (pidns) {
        /* PROGRAM's own status when the namespace init got to report it. */
        int reported;
        if (read(report[0], &reported, sizeof reported) == sizeof reported) status = reported;
    }
    kill_tree(self);
    exit_like(status);
    return 0;
}
