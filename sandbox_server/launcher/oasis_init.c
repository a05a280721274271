/*
 * oasis-init: the supervisor every execution starts under.
 *
 *   oasis-init [OPTIONS] -- PROGRAM [ARG...]
 *
 * The server never forks itself (gRPC and fork do not mix); it execs this
 * program, which applies the isolation steps and then runs PROGRAM:
 *
 *   --pidns            own pid namespace; a tiny init (pid 1) reaps orphans and,
 *                      when PROGRAM ends, takes every other process down with it
 *   --netns            own network namespace with only loopback
 *   --join-netns FD    join the network namespace open on FD (a session's
 *                      egress network, prepared by the server)
 *   --resolv-conf PATH with --root: bind PATH as /etc/resolv.conf
 *   --cgroup DIR       move into this cgroup before anything starts
 *                      (repeatable: one folder per cgroup v1 hierarchy)
 *   --ipcns --utsns    own System V IPC and hostname
 *   --root             own mount namespace and a new root: read-only binds of
 *                      the system folders and of each --ro PATH, each --rw PATH
 *                      writable, a private /tmp and /dev/shm, a minimal /dev,
 *                      and /proc for the pid namespace
 *   --ro PATH, --rw PATH, --tmp-size BYTES
 *   --uid N --gid N    drop to this uid/gid (no supplementary groups)
 *   --init-uid N       with --pidns: the namespace's pid 1 drops to this uid
 *                      once the program runs
 *   --server-pid N     exit at once unless N (the server) is still our parent
 *   --rlimit NAME=N    cpu, as, nproc, nofile, fsize (repeatable)
 *   --seccomp          deny syscalls namespaces do not cover (io_uring, vsock,
 *                      keyctl, ptrace, TIOCSTI, new namespaces, mounts, ...)
 *   --env NAME=VALUE   PROGRAM's environment (repeatable). oasis-init itself
 *                      runs as root before any isolation, so it must be
 *                      started with an empty environment: the dynamic loader
 *                      would honour LD_PRELOAD and the like. These variables
 *                      are given only to PROGRAM, by execve, after the drop.
 *   --box              with --pidns: build the namespaces and the root but run
 *                      nothing; print "ready PID" (the namespace's init) once
 *                      built, and keep it until SIGTERM. A warm child enters
 *                      it (liboasis-init's oasis_enter, --enter-ns FD ...)
 *   --args-fd FD       read further options from FD, NUL-separated, so that
 *                      they (env values, host paths) never show in
 *                      /proc/PID/cmdline, which the code can read
 *
 *   oasis-init --hold-netns
 *                      create a network namespace with loopback up, print
 *                      "ready", and keep it alive until stdin closes
 *
 * Exit status: PROGRAM's own (its exit code, or death by the same signal);
 * 125 when a setup step failed (the reason is on stderr). oasis-init is the
 * child subreaper of the tree: when PROGRAM ends, or on SIGTERM, every
 * process left is killed, including ones that called setsid.
 *
 * Built with -DOASIS_LIBRARY it is liboasis-init.so instead, for processes
 * forked from a preloaded interpreter (the warm launcher's zygote) that run
 * their code in place of exec'ing a program: oasis_enter() joins a --box
 * built for it and takes the program's last steps (limits, uid, seccomp).
 *
 * One file on purpose, though long: build.py compiles it alone with nothing
 * but a C compiler; its sections (process tree, mounts, seccomp, options, main)
 * read top to bottom, each using only what comes before it.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <grp.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <net/if.h>
#include <sched.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#define MAX_PATHS 32
#define MAX_LIMITS 8
#define MAX_ENV 256
#define MAX_CGROUPS 8
#define MAX_NAMESPACES 8
#define MAX_ARGS_BYTES (1 << 20)

struct options {
    int pidns, netns, ipcns, utsns, root, seccomp, box;
    int enter_ns[MAX_NAMESPACES];
    int n_enter_ns;
    const char *ro[MAX_PATHS];
    int n_ro;
    const char *rw[MAX_PATHS];
    int n_rw;
    long long tmp_size;
    long uid, gid;
    int limit_res[MAX_LIMITS];
    rlim_t limit_val[MAX_LIMITS];
    int n_limits;
    char *env[MAX_ENV + 1];
    int n_env;
    int join_netns;
    long init_uid;
    long server_pid;
    const char *resolv_conf;
    const char *cgroups[MAX_CGROUPS];
    int n_cgroups;
    char **argv;
};

static volatile sig_atomic_t kill_requested = 0;
static volatile pid_t program_pid = 0;

static void on_term(int sig) {
    (void)sig;
    kill_requested = 1;
    /* kill() is async-signal-safe: act at once rather than after waitpid returns. */
    if (program_pid > 0) kill(program_pid, SIGKILL);
}

static void die(const char *what) {
    fprintf(stderr, "oasis-init: %s: %s\n", what, strerror(errno));
    _exit(125);
}

static void die_msg(const char *what, const char *detail) {
    fprintf(stderr, "oasis-init: %s: %s\n", what, detail);
    _exit(125);
}

/* Once the program is forked, we print nothing more: let go of its stdout
   and stderr, so that the server reads EOF on them as soon as the program's
   own copies close, not only when we exit after it. */
static void release_stdio(void) {
    int null = open("/dev/null", O_WRONLY | O_CLOEXEC);
    if (null < 0) return;
    dup2(null, STDOUT_FILENO);
    dup2(null, STDERR_FILENO);
    close(null);
}

/* ---- process tree ---------------------------------------------------- */

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
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0) continue;
        ssize_t n = read(fd, buf, sizeof buf - 1);
        close(fd);
        if (n <= 0) continue;
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

/* Kill and reap everything below us until nothing is left (bounded). With a
   pid namespace the kernel has already killed it all: the first check returns. */
static void kill_tree(pid_t self) {
    for (int round = 0; round < 10000; round++) {
        pid_t reaped;
        int any = 0;
        while ((reaped = waitpid(-1, NULL, WNOHANG)) > 0) any = 1;
        if (reaped < 0 && errno == ECHILD) return;
        kill_children(self);
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

/* ---- mounts ---------------------------------------------------------- */

static void mkdirs(const char *path, mode_t mode) {
    char buf[4096];
    if (strlen(path) >= sizeof buf) die_msg("path too long", path);
    strcpy(buf, path);
    for (char *p = buf + 1; *p; p++) {
        if (*p != '/') continue;
        *p = '\0';
        if (mkdir(buf, mode) != 0 && errno != EEXIST) die(buf);
        *p = '/';
    }
    if (mkdir(buf, mode) != 0 && errno != EEXIST) die(buf);
}

static void bind_from(const char *source, const char *path, int writable, int optional);

/* Mount attributes on a whole tree: a bind of /usr must not leave a file
   system mounted below it writable (or with suid and devices). */
struct oasis_mount_attr {
    unsigned long long attr_set, attr_clr, propagation, userns_fd;
};
#define OASIS_ATTR_RDONLY 0x1ULL
#define OASIS_ATTR_NOSUID 0x2ULL
#define OASIS_ATTR_NODEV 0x4ULL
#ifndef AT_RECURSIVE
#define AT_RECURSIVE 0x8000
#endif

/* Older kernels lack mount_setattr: remount each mount at or below `path`. */
static void remount_each(const char *path, unsigned long flags) {
    FILE *info = fopen("/proc/self/mountinfo", "re");
    if (!info) info = fopen("/oldroot/proc/self/mountinfo", "re");
    if (!info) die("mountinfo");
    size_t len = strlen(path);
    char line[8192];
    while (fgets(line, sizeof line, info)) {
        char point[4096];
        /* id parent major:minor root mount-point ... */
        if (sscanf(line, "%*s %*s %*s %*s %4095s", point) != 1) continue;
        if (strncmp(point, path, len) != 0 || (point[len] != '\0' && point[len] != '/')) continue;
        struct statvfs current;
        unsigned long keep = statvfs(point, &current) == 0 && (current.f_flag & ST_NOEXEC) ? MS_NOEXEC : 0;
        if (mount(NULL, point, NULL, flags | keep, NULL) != 0) die(point);
    }
    fclose(info);
}

static void restrict_tree(const char *path, int writable) {
    struct oasis_mount_attr attr = {OASIS_ATTR_NOSUID | OASIS_ATTR_NODEV, 0, 0, 0};
    if (!writable) attr.attr_set |= OASIS_ATTR_RDONLY;
    if (syscall(__NR_mount_setattr, AT_FDCWD, path, AT_RECURSIVE, &attr, sizeof attr) == 0) return;
    if (errno != ENOSYS) die(path);
    unsigned long flags = MS_BIND | MS_REMOUNT | MS_NOSUID | MS_NODEV | (writable ? 0 : MS_RDONLY);
    if (mount(NULL, path, NULL, flags, NULL) != 0) die(path);
    remount_each(path, flags);
}

/* Bind /oldroot/PATH at PATH in the new root, read-only unless writable. */
static void bind_path(const char *path, int writable, int optional) {
    char source[4096];
    snprintf(source, sizeof source, "/oldroot%s", path);
    bind_from(source, path, writable, optional);
}

static void bind_from(const char *source, const char *path, int writable, int optional) {
    struct stat st;
    if (lstat(source, &st) != 0) {
        if (optional) return;
        die(source);
    }
    if (S_ISLNK(st.st_mode)) {
        /* e.g. /bin -> usr/bin on merged-usr systems: recreate the link. */
        char target[4096];
        ssize_t n = readlink(source, target, sizeof target - 1);
        if (n < 0) die(source);
        target[n] = '\0';
        char parent[4096];
        snprintf(parent, sizeof parent, "%s", path);
        char *slash = strrchr(parent, '/');
        if (slash && slash != parent) {
            *slash = '\0';
            mkdirs(parent, 0755);
        }
        if (symlink(target, path) != 0 && errno != EEXIST) die(path);
        return;
    }
    if (S_ISDIR(st.st_mode)) {
        mkdirs(path, 0755);
    } else {
        char parent[4096];
        snprintf(parent, sizeof parent, "%s", path);
        char *slash = strrchr(parent, '/');
        if (slash && slash != parent) {
            *slash = '\0';
            mkdirs(parent, 0755);
        }
        int fd = open(path, O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
        if (fd < 0) die(path);
        close(fd);
    }
    if (mount(source, path, NULL, MS_BIND | MS_REC, NULL) != 0) die(path);
    restrict_tree(path, writable);
}

static void bind_device(const char *name) {
    char path[64], source[80];
    snprintf(path, sizeof path, "/dev/%s", name);
    snprintf(source, sizeof source, "/oldroot/dev/%s", name);
    int fd = open(path, O_WRONLY | O_CREAT | O_CLOEXEC, 0666);
    if (fd < 0) die(path);
    close(fd);
    if (mount(source, path, NULL, MS_BIND, NULL) != 0) die(path);
}

static const char *SYSTEM_DIRS[] = {"/usr", "/bin", "/sbin", "/lib", "/lib64", "/lib32", "/libx32", NULL};
/* Just what programs need to run, resolve names and verify TLS. */
static const char *ETC_FILES[] = {
    "/etc/alternatives", "/etc/ssl", "/etc/ca-certificates", "/etc/ld.so.cache", "/etc/ld.so.conf",
    "/etc/ld.so.conf.d", "/etc/resolv.conf", "/etc/hosts", "/etc/nsswitch.conf", "/etc/host.conf",
    "/etc/gai.conf", "/etc/localtime", "/etc/mime.types", "/etc/pip.conf", "/etc/xdg/pip",
    "/etc/npmrc", "/etc/fonts", "/etc/protocols", "/etc/services", NULL,
};

static void build_root(const struct options *o) {
    char cwd[4096];
    if (!getcwd(cwd, sizeof cwd)) die("getcwd");
    if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) != 0) die("make / private");
    /* The new root is a tmpfs; once pivoted, the old root is read from /oldroot. */
    const char *base = "/tmp";
    if (mount("oasis-root", base, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755,size=1m") != 0) die("root tmpfs");
    if (chdir(base) != 0) die("chdir new root");
    if (mkdir("oldroot", 0755) != 0) die("mkdir oldroot");
    if (syscall(SYS_pivot_root, ".", "oldroot") != 0) die("pivot_root");
    if (chdir("/") != 0) die("chdir /");

    for (const char **d = SYSTEM_DIRS; *d; d++) bind_path(*d, 0, 1);
    mkdirs("/etc", 0755);
    for (const char **f = ETC_FILES; *f; f++) {
        if (o->resolv_conf && strcmp(*f, "/etc/resolv.conf") == 0) {
            char source[4096];
            snprintf(source, sizeof source, "/oldroot%s", o->resolv_conf);
            bind_from(source, *f, 0, 0);
        } else {
            bind_path(*f, 0, 1);
        }
    }
    char tmp_opts[64];
    snprintf(tmp_opts, sizeof tmp_opts, "mode=1777,size=%lld", o->tmp_size);
    mkdirs("/tmp", 01777);
    if (mount("tmp", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, tmp_opts) != 0) die("mount /tmp");

    mkdirs("/dev", 0755);
    if (mount("dev", "/dev", "tmpfs", MS_NOSUID | MS_NOEXEC, "mode=0755,size=64k") != 0) die("mount /dev");
    const char *devices[] = {"null", "zero", "full", "random", "urandom", NULL};
    for (const char **d = devices; *d; d++) bind_device(*d);
    mkdirs("/dev/shm", 01777);
    if (mount("shm", "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV, tmp_opts) != 0) die("mount /dev/shm");
    if (symlink("/proc/self/fd", "/dev/fd") != 0 || symlink("/proc/self/fd/0", "/dev/stdin") != 0 ||
        symlink("/proc/self/fd/1", "/dev/stdout") != 0 || symlink("/proc/self/fd/2", "/dev/stderr") != 0)
        die("/dev links");

    mkdirs("/proc", 0555);
    if (mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL) != 0) die("mount /proc");

    /* Last, so that a workspace under /tmp lands on top of the private /tmp. */
    for (int i = 0; i < o->n_ro; i++) bind_path(o->ro[i], 0, 0);
    for (int i = 0; i < o->n_rw; i++) bind_path(o->rw[i], 1, 0);

    if (umount2("/oldroot", MNT_DETACH) != 0) die("detach old root");
    rmdir("/oldroot");
    /* The root tmpfs itself becomes read-only: only the binds above are writable. */
    if (mount(NULL, "/", NULL, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV, NULL) != 0)
        die("remount / read-only");
    if (chdir(cwd) != 0) die(cwd);
}

static void loopback_up(void) {
    int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return;
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    strcpy(ifr.ifr_name, "lo");
    if (ioctl(fd, SIOCGIFFLAGS, &ifr) == 0) {
        ifr.ifr_flags |= IFF_UP | IFF_RUNNING;
        ioctl(fd, SIOCSIFFLAGS, &ifr);
    }
    close(fd);
}

/* ---- seccomp --------------------------------------------------------- */

#if defined(__x86_64__)
#define OASIS_AUDIT_ARCH AUDIT_ARCH_X86_64
#elif defined(__aarch64__)
#define OASIS_AUDIT_ARCH AUDIT_ARCH_AARCH64
#endif

#ifdef SO_BINDTOIFINDEX
#define OASIS_SO_BINDTOIFINDEX SO_BINDTOIFINDEX
#else
#define OASIS_SO_BINDTOIFINDEX 62
#endif

#ifdef OASIS_AUDIT_ARCH
/*
 * The filter is built from a table: each rule names a syscall, up to two
 * argument checks that must all hold, and the result. build_filter() lays
 * out one block per rule and computes every jump, so adding a rule cannot
 * break an offset. Arguments are compared on their low 32 bits (the word
 * BPF loads on these little-endian targets), which hold every value below.
 */
enum arg_test { ARG_NONE, ARG_EQ, ARG_ANY_BIT };

struct arg_check {
    enum arg_test test; /* ARG_EQ: args[index] == value; ARG_ANY_BIT: args[index] & value */
    unsigned index;
    uint32_t value;
};

struct seccomp_rule {
    uint32_t nr;
    struct arg_check checks[2]; /* unused ones are ARG_NONE (zero) */
    uint32_t action;
};

#define EPERM_RET (SECCOMP_RET_ERRNO | EPERM)
#define DENY(number) {.nr = (number), .action = EPERM_RET}
#define NEW_NAMESPACES \
    (CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWUTS | CLONE_NEWCGROUP)

static const struct seccomp_rule RULES[] = {
    /* io_uring bypasses the syscall filter for the operations it runs. */
    DENY(__NR_io_uring_setup), DENY(__NR_io_uring_enter), DENY(__NR_io_uring_register),
    DENY(__NR_keyctl), DENY(__NR_add_key), DENY(__NR_request_key),
    DENY(__NR_ptrace), DENY(__NR_process_vm_readv), DENY(__NR_process_vm_writev),
    DENY(__NR_bpf), DENY(__NR_perf_event_open), DENY(__NR_userfaultfd),
    DENY(__NR_unshare), DENY(__NR_setns), DENY(__NR_mount), DENY(__NR_umount2),
    DENY(__NR_pivot_root), DENY(__NR_open_by_handle_at), DENY(__NR_name_to_handle_at),
    DENY(__NR_kexec_load), DENY(__NR_init_module), DENY(__NR_finit_module),
    DENY(__NR_delete_module), DENY(__NR_swapon), DENY(__NR_swapoff), DENY(__NR_reboot),
    DENY(__NR_syslog), DENY(__NR_acct), DENY(__NR_quotactl), DENY(__NR_fsopen),
    DENY(__NR_fsmount), DENY(__NR_move_mount), DENY(__NR_open_tree), DENY(__NR_fspick),
    DENY(__NR_mount_setattr), DENY(__NR_personality),
    /* clone3 takes its flags in memory the filter cannot read: make libc fall back to clone. */
    {.nr = __NR_clone3, .action = SECCOMP_RET_ERRNO | ENOSYS},
    /* clone: no new namespaces (flags are the first argument on x86_64 and arm64). */
    {.nr = __NR_clone, .checks = {{ARG_ANY_BIT, 0, NEW_NAMESPACES}}, .action = EPERM_RET},
    /* socket(AF_VSOCK, ...): a path out of a VM that namespaces do not close. */
    {.nr = __NR_socket, .checks = {{ARG_EQ, 0, AF_VSOCK}}, .action = SECCOMP_RET_ERRNO | EAFNOSUPPORT},
    /* setsockopt(SOL_SOCKET, SO_BINDTODEVICE / SO_BINDTOIFINDEX): a socket tied to an
       interface bypasses the routes that keep the host and private ranges out of reach. */
    {.nr = __NR_setsockopt, .checks = {{ARG_EQ, 1, SOL_SOCKET}, {ARG_EQ, 2, SO_BINDTODEVICE}}, .action = EPERM_RET},
    {.nr = __NR_setsockopt, .checks = {{ARG_EQ, 1, SOL_SOCKET}, {ARG_EQ, 2, OASIS_SO_BINDTOIFINDEX}}, .action = EPERM_RET},
    /* ioctl TIOCSTI / TIOCLINUX push input into a terminal. */
    {.nr = __NR_ioctl, .checks = {{ARG_EQ, 1, TIOCSTI}}, .action = EPERM_RET},
    {.nr = __NR_ioctl, .checks = {{ARG_EQ, 1, TIOCLINUX}}, .action = EPERM_RET},
};

#define N_RULES (sizeof RULES / sizeof RULES[0])
/* Prologue (6), per rule at most 7 (nr test, two loads and tests, return, reload), allow. */
#define MAX_FILTER (6 + 7 * N_RULES + 1)

struct filter {
    struct sock_filter code[MAX_FILTER];
    unsigned short len;
};

static unsigned short emit(struct filter *f, struct sock_filter insn) {
    if (f->len >= MAX_FILTER) die_msg("seccomp", "filter table overflows its buffer");
    f->code[f->len] = insn;
    return f->len++;
}

/* A conditional jump whose targets land_true/land_false fill in later. */
static unsigned short jump(struct filter *f, uint16_t op, uint32_t value) {
    return emit(f, (struct sock_filter)BPF_JUMP(BPF_JMP | op | BPF_K, value, 0, 0));
}

static unsigned char distance_from(const struct filter *f, unsigned short from) {
    unsigned distance = (unsigned)f->len - from - 1u;
    if (distance > 255) die_msg("seccomp", "jump too long");
    return (unsigned char)distance;
}

/* Point the true (false) branch of the jump at `from` to the next instruction emitted. */
static void land_true(struct filter *f, unsigned short from) { f->code[from].jt = distance_from(f, from); }
static void land_false(struct filter *f, unsigned short from) { f->code[from].jf = distance_from(f, from); }

static void load(struct filter *f, uint32_t offset) {
    emit(f, (struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offset));
}

static void ret(struct filter *f, uint32_t action) {
    emit(f, (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, action));
}

static void build_filter(struct filter *f) {
    f->len = 0;
    load(f, offsetof(struct seccomp_data, arch));
    unsigned short arch = jump(f, BPF_JEQ, OASIS_AUDIT_ARCH);
    ret(f, SECCOMP_RET_KILL_PROCESS);
    land_true(f, arch);
    load(f, offsetof(struct seccomp_data, nr));
#if defined(__x86_64__)
    /* The x32 ABI would reach the same calls under other numbers. */
    unsigned short x32 = jump(f, BPF_JGE, 0x40000000);
    ret(f, EPERM_RET);
    land_false(f, x32);
#endif
    for (size_t r = 0; r < N_RULES; r++) {
        const struct seccomp_rule *rule = &RULES[r];
        unsigned short misses[2];
        int n_misses = 0;
        unsigned short other_nr = jump(f, BPF_JEQ, rule->nr);
        for (int c = 0; c < 2 && rule->checks[c].test != ARG_NONE; c++) {
            const struct arg_check *check = &rule->checks[c];
            uint16_t op = check->test == ARG_EQ ? BPF_JEQ : BPF_JSET;
            load(f, (uint32_t)offsetof(struct seccomp_data, args[0]) + check->index * (uint32_t)sizeof(uint64_t));
            misses[n_misses++] = jump(f, op, check->value);
        }
        ret(f, rule->action);
        /* A failed argument check lands here: the accumulator holds an argument, not nr. */
        for (int m = 0; m < n_misses; m++) land_false(f, misses[m]);
        if (n_misses) load(f, offsetof(struct seccomp_data, nr));
        land_false(f, other_nr);
    }
    ret(f, SECCOMP_RET_ALLOW);
}

static void install_seccomp(void) {
    static struct filter f;
    build_filter(&f);
    struct sock_fprog prog = {.len = f.len, .filter = f.code};
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) die("no_new_privs");
    if (syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &prog) != 0) die("seccomp");
}
#else
static void install_seccomp(void) { die_msg("seccomp", "no filter for this architecture"); }
#endif

/* ---- the program ----------------------------------------------------- */

static void drop_privileges(const struct options *o) {
    for (int i = 0; i < o->n_limits; i++) {
        struct rlimit rl = {o->limit_val[i], o->limit_val[i]};
        /* CPU: SIGXCPU at the soft limit, SIGKILL a second later at the hard one. */
        if (o->limit_res[i] == RLIMIT_CPU) rl.rlim_max = rl.rlim_cur + 1;
        if (setrlimit(o->limit_res[i], &rl) != 0) die("setrlimit");
    }
    struct rlimit no_core = {0, 0};
    setrlimit(RLIMIT_CORE, &no_core);
    if (o->gid >= 0) {
        if (setgroups(0, NULL) != 0) die("setgroups");
        if (setresgid((gid_t)o->gid, (gid_t)o->gid, (gid_t)o->gid) != 0) die("setresgid");
    }
    if (o->uid >= 0 && setresuid((uid_t)o->uid, (uid_t)o->uid, (uid_t)o->uid) != 0) die("setresuid");
    if (o->seccomp) install_seccomp();
}

/* The last steps in the program's own process: default signals, limits, the
   uid drop and seccomp. What follows is the program (execve, or the warm
   runtime's own code when built as a library). */
static void enter_program(const struct options *o) {
    signal(SIGTERM, SIG_DFL);
    signal(SIGINT, SIG_DFL);
    signal(SIGHUP, SIG_DFL);
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    drop_privileges(o);
    /* The pdeath signal is cleared by the uid change: set it again, so the
       program dies with us even without a pid namespace. */
    prctl(PR_SET_PDEATHSIG, SIGKILL);
}

/* pid 1 only waits and reports: it keeps no capability, runs as a uid of its
   own (--init-uid, no process of the host or the code has it: neither can
   signal it or read its memory) and is under the same seccomp filter. */
static void drop_init_privileges(const struct options *o) {
    const uid_t id = (uid_t)o->init_uid;
    if (setgroups(0, NULL) != 0) die("setgroups");
    if (setresgid(id, id, id) != 0) die("setresgid");
    if (setresuid(id, id, id) != 0) die("setresuid");
    prctl(PR_SET_DUMPABLE, 0);
    if (o->seccomp) install_seccomp();
}

/*
 * --box: pid 1 of a namespace that a warm child enters later (oasis_enter).
 * It says it is ready with one byte on `report` and then only reaps, until
 * the supervisor kills it (and with it, the whole namespace).
 */
static void box_init(const struct options *o, int report) {
    if (o->uid >= 0 && o->init_uid >= 0) drop_init_privileges(o);
    /* Set after the uid change, which clears it: the box ends with its supervisor. */
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    sigset_t chld;
    sigemptyset(&chld);
    sigaddset(&chld, SIGCHLD);
    sigprocmask(SIG_BLOCK, &chld, NULL);
    char ready = 1;
    if (write(report, &ready, 1) != 1) _exit(125);
    close(report);
    /* Orphans of the entered program land here: reap each as it exits. */
    for (;;) {
        while (waitpid(-1, NULL, WNOHANG) > 0) {
        }
        sigwaitinfo(&chld, NULL);
    }
}

/*
 * pid 1 of the namespace: forks the program as pid 2 (the only process that
 * returns from here), reaps orphans, and reports the program's wait status to
 * the supervisor through `report`. When pid 1 exits the kernel kills
 * everything else in the namespace.
 */
static void namespace_init(const struct options *o, int report) {
    if (o->root) build_root(o);
    if (o->netns) loopback_up();
    if (o->utsns) sethostname("sandbox", 7);
    if (o->box) box_init(o, report);
    pid_t program = fork();
    if (program < 0) die("fork");
    if (program == 0) {
        close(report);
        return;
    }
    if (o->uid >= 0 && o->init_uid >= 0) drop_init_privileges(o);
    release_stdio();
    int status = 0;
    for (;;) {
        int st;
        pid_t done = wait(&st);
        if (done == program) {
            status = st;
            break;
        }
        if (done < 0 && errno != EINTR) break;
    }
    if (write(report, &status, sizeof status) != (ssize_t)sizeof status) _exit(125);
    _exit(0);
}

/* A whole decimal number within [min, max], or die naming the option. */
static long long number(const char *option, const char *text, long long min, long long max) {
    char *end;
    errno = 0;
    long long value = strtoll(text, &end, 10);
    if (errno || end == text || *end || value < min || value > max) die_msg(option, "not a valid number");
    return value;
}

static void join_cgroup(const char *dir) {
    char path[4096], pid[32];
    snprintf(path, sizeof path, "%s/cgroup.procs", dir);
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    if (fd < 0) die(path);
    int n = snprintf(pid, sizeof pid, "%d\n", (int)getpid());
    if (write(fd, pid, (size_t)n) != n) die(path);
    close(fd);
}

#ifndef OASIS_LIBRARY
/* --hold-netns: a network namespace that lives as long as our stdin is open. */
static int hold_netns(void) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (unshare(CLONE_NEWNET) != 0) die("unshare network namespace");
    loopback_up();
    if (write(STDOUT_FILENO, "ready\n", 6) != 6) die("write ready");
    char buf[64];
    while (read(STDIN_FILENO, buf, sizeof buf) > 0) {
    }
    return 0;
}
#endif

/* Options after --args-fd come from the fd, NUL-separated, followed by the
   rest of the command line (the PROGRAM part). */
/* Where --args-fd's options were read to (the library wipes them before the code runs). */
static char *args_buffer;

static char **expand_args_fd(int argc, char **argv, int *new_argc) {
    int fd = (int)number("--args-fd", argv[2], 0, 1 << 20);
    char *buf = args_buffer = malloc(MAX_ARGS_BYTES + 1);
    if (!buf) die("malloc");
    size_t used = 0;
    for (;;) {
        ssize_t n = read(fd, buf + used, MAX_ARGS_BYTES - used);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) die("read --args-fd");
        if (n == 0) break;
        used += (size_t)n;
        if (used == MAX_ARGS_BYTES) die_msg("--args-fd", "options too long");
    }
    close(fd);
    buf[used] = '\0';
    int tokens = 0;
    for (size_t i = 0; i < used; i++) tokens += buf[i] == '\0';
    char **out = calloc((size_t)(argc + tokens + 2), sizeof *out);
    if (!out) die("calloc");
    int k = 0;
    out[k++] = argv[0];
    for (size_t i = 0; i < used; i += strlen(buf + i) + 1) out[k++] = buf + i;
    for (int i = 3; i < argc; i++) out[k++] = argv[i];
    out[k] = NULL;
    *new_argc = k;
    return out;
}

static void parse_limit(const char *spec, int *res, rlim_t *value) {
    static const struct { const char *name; int res; } names[] = {
        {"cpu", RLIMIT_CPU}, {"as", RLIMIT_AS}, {"nproc", RLIMIT_NPROC},
        {"nofile", RLIMIT_NOFILE}, {"fsize", RLIMIT_FSIZE}, {NULL, 0},
    };
    const char *eq = strchr(spec, '=');
    if (!eq) die_msg("bad --rlimit", spec);
    for (int i = 0; names[i].name; i++) {
        if (strlen(names[i].name) == (size_t)(eq - spec) && strncmp(spec, names[i].name, (size_t)(eq - spec)) == 0) {
            *res = names[i].res;
            /* Below RLIM_INFINITY: an absent limit is no --rlimit at all. */
            *value = (rlim_t)number("--rlimit", eq + 1, 0, INT64_MAX);
            return;
        }
    }
    die_msg("bad --rlimit", spec);
}

/* Append `value` to a bounded list, or die naming the option. */
#define PUSH(option, list, count, max, value)                  \
    do {                                                       \
        if ((count) >= (max)) die_msg("too many", option);     \
        (list)[(count)++] = (value);                           \
    } while (0)

enum { OPT_PIDNS = 1, OPT_NETNS, OPT_IPCNS, OPT_UTSNS, OPT_ROOT, OPT_SECCOMP, OPT_RO, OPT_RW,
       OPT_TMP_SIZE, OPT_JOIN_NETNS, OPT_INIT_UID, OPT_SERVER_PID, OPT_RESOLV_CONF, OPT_CGROUP,
       OPT_ENV, OPT_UID, OPT_GID, OPT_RLIMIT, OPT_BOX, OPT_ENTER_NS };

static const struct option long_options[] = {
    {"pidns", no_argument, NULL, OPT_PIDNS},
    {"netns", no_argument, NULL, OPT_NETNS},
    {"ipcns", no_argument, NULL, OPT_IPCNS},
    {"utsns", no_argument, NULL, OPT_UTSNS},
    {"root", no_argument, NULL, OPT_ROOT},
    {"seccomp", no_argument, NULL, OPT_SECCOMP},
    {"ro", required_argument, NULL, OPT_RO},
    {"rw", required_argument, NULL, OPT_RW},
    {"tmp-size", required_argument, NULL, OPT_TMP_SIZE},
    {"join-netns", required_argument, NULL, OPT_JOIN_NETNS},
    {"init-uid", required_argument, NULL, OPT_INIT_UID},
    {"server-pid", required_argument, NULL, OPT_SERVER_PID},
    {"resolv-conf", required_argument, NULL, OPT_RESOLV_CONF},
    {"cgroup", required_argument, NULL, OPT_CGROUP},
    {"env", required_argument, NULL, OPT_ENV},
    {"uid", required_argument, NULL, OPT_UID},
    {"gid", required_argument, NULL, OPT_GID},
    {"rlimit", required_argument, NULL, OPT_RLIMIT},
    {"box", no_argument, NULL, OPT_BOX},
    {"enter-ns", required_argument, NULL, OPT_ENTER_NS},
    {NULL, 0, NULL, 0},
};

/* getopt_long takes any unambiguous prefix (--pid for --pidns): insist on the whole name. */
static void check_spelling(const char *given, int index) {
    const char *name = long_options[index].name;
    size_t len = strcspn(given + 2, "=");
    if (strncmp(given, "--", 2) != 0 || len != strlen(name) || strncmp(given + 2, name, len) != 0)
        die_msg("unknown option", given);
}

static void parse_options(int argc, char **argv, struct options *o) {
    memset(o, 0, sizeof *o);
    o->uid = o->gid = -1;
    o->join_netns = -1;
    o->init_uid = -1;
    o->tmp_size = 64LL << 20;
    /* "+": stop at the first non-option (PROGRAM's own arguments are never parsed);
       ":": report a missing value as ':' rather than printing getopt's message. */
    opterr = 0;
    /* A fresh scan: the library runs in a process whose getopt state is not ours. */
    optind = 0;
    int opt, index = -1, at = 1; /* the argument getopt looks at next */
    const char *last_value = NULL;
    while ((opt = getopt_long(argc, argv, "+:", long_options, &index)) != -1) {
        if (opt == '?') die_msg("unknown option", argv[at]);
        if (opt == ':') die_msg("missing value for option", argv[at]);
        check_spelling(argv[at], index);
        last_value = optarg;
        switch (opt) {
        case OPT_PIDNS: o->pidns = 1; break;
        case OPT_NETNS: o->netns = 1; break;
        case OPT_IPCNS: o->ipcns = 1; break;
        case OPT_UTSNS: o->utsns = 1; break;
        case OPT_ROOT: o->root = 1; break;
        case OPT_SECCOMP: o->seccomp = 1; break;
        case OPT_RO: PUSH("--ro", o->ro, o->n_ro, MAX_PATHS, optarg); break;
        case OPT_RW: PUSH("--rw", o->rw, o->n_rw, MAX_PATHS, optarg); break;
        case OPT_TMP_SIZE: o->tmp_size = number("--tmp-size", optarg, 4096, 1LL << 50); break;
        case OPT_JOIN_NETNS: o->join_netns = (int)number("--join-netns", optarg, 0, 1 << 20); break;
        case OPT_INIT_UID: o->init_uid = (long)number("--init-uid", optarg, 1, UINT32_MAX - 1); break;
        case OPT_SERVER_PID: o->server_pid = (long)number("--server-pid", optarg, 1, INT32_MAX); break;
        case OPT_RESOLV_CONF: o->resolv_conf = optarg; break;
        case OPT_CGROUP: PUSH("--cgroup", o->cgroups, o->n_cgroups, MAX_CGROUPS, optarg); break;
        case OPT_ENV: PUSH("--env", o->env, o->n_env, MAX_ENV, optarg); break;
        case OPT_UID: o->uid = (long)number("--uid", optarg, 0, UINT32_MAX - 1); break;
        case OPT_GID: o->gid = (long)number("--gid", optarg, 0, UINT32_MAX - 1); break;
        case OPT_BOX: o->box = 1; break;
        case OPT_ENTER_NS:
            PUSH("--enter-ns", o->enter_ns, o->n_enter_ns, MAX_NAMESPACES,
                 (int)number("--enter-ns", optarg, 0, 1 << 20));
            break;
        case OPT_RLIMIT:
            if (o->n_limits >= MAX_LIMITS) die_msg("too many", "--rlimit");
            parse_limit(optarg, &o->limit_res[o->n_limits], &o->limit_val[o->n_limits]);
            o->n_limits++;
            break;
        }
        at = optind;
    }
    /* PROGRAM must follow a "--" of its own (not one taken as an option's value). */
    if (optind >= argc || optind < 2 || strcmp(argv[optind - 1], "--") != 0 || argv[optind - 1] == last_value)
        die_msg("usage", "oasis-init [OPTIONS] -- PROGRAM [ARG...]");
    if (o->root && !o->pidns) die_msg("usage", "--root needs --pidns (for its /proc)");
    if (o->box && !o->pidns) die_msg("usage", "--box needs --pidns");
    o->argv = &argv[optind];
}

/*
 * Every isolation step, from the command line's options. Returns only in the
 * program's own process, isolated and with privileges dropped; the supervisor
 * (this process) and the namespace's pid 1 wait for the program and exit.
 */
#ifdef OASIS_LIBRARY
/* The library only enters boxes: the command's path is compiled, checked, and dropped. */
__attribute__((unused))
#endif
static void confine(struct options *o) {
    pid_t self = getpid();
    /* If the server dies, take the whole execution down with us; if it died
       before the death signal was armed, stop here. */
    prctl(PR_SET_PDEATHSIG, SIGTERM);
    if (o->server_pid > 0 && getppid() != (pid_t)o->server_pid) die_msg("start", "the server is gone");
    if (prctl(PR_SET_CHILD_SUBREAPER, 1) != 0) die("subreaper");

    /* Children inherit the cgroup: join before anything is forked. */
    for (int i = 0; i < o->n_cgroups; i++) join_cgroup(o->cgroups[i]);
    if (o->join_netns >= 0) {
        if (setns(o->join_netns, CLONE_NEWNET) != 0) die("join network namespace");
        close(o->join_netns);
    }

    /* With a new root, also a cgroup namespace: /proc/self/cgroup then shows "/",
       not the host's cgroup paths. */
    int flags = (o->root && o->n_cgroups ? CLONE_NEWCGROUP : 0) | (o->pidns ? CLONE_NEWPID : 0) |
                (o->netns ? CLONE_NEWNET : 0) | (o->ipcns ? CLONE_NEWIPC : 0) |
                (o->utsns ? CLONE_NEWUTS : 0) | (o->root ? CLONE_NEWNS : 0);
    if (flags && unshare(flags) != 0) die("unshare");

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_term;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGHUP, &sa, NULL);

    int report[2] = {-1, -1};
    if (o->pidns && pipe2(report, O_CLOEXEC) != 0) die("pipe");

    pid_t child = fork();
    if (child < 0) die("fork");
    if (child == 0) {
        /* Die with us, even if we are SIGKILLed before we can clean up. */
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        /* In a new pid namespace the parent lies outside it and shows as 0. */
        pid_t parent = getppid();
        if (parent != self && parent != 0) _exit(125);
        if (o->pidns) {
            close(report[0]);
            namespace_init(o, report[1]);
        }
        enter_program(o);
        return;
    }
    program_pid = child;
    if (o->pidns) close(report[1]);
    if (!o->box) release_stdio(); /* a box's stdout is its own, for "ready" */
    if (o->box) {
        /* The namespace is built: say so, with the pid of its init (whose
           /proc/PID/ns/ entries the server opens for the warm child). */
        char ready;
        if (read(report[0], &ready, 1) == 1) {
            char line[32];
            int n = snprintf(line, sizeof line, "ready %d\n", (int)child);
            if (write(STDOUT_FILENO, line, (size_t)n) != n) kill(child, SIGKILL);
        }
    }

    int status = 0;
    for (;;) {
        if (kill_requested) kill(child, SIGKILL);
        pid_t done = waitpid(child, &status, 0);
        if (done == child) break;
        if (done < 0 && errno != EINTR) { status = 0; break; }
    }
    if (o->pidns) {
        /* The namespace init reports the program's own status; without a
           report, setup failed (125) or the init itself was killed. */
        int program_status;
        if (read(report[0], &program_status, sizeof program_status) == (ssize_t)sizeof program_status)
            status = program_status;
    }
    kill_tree(self);
    exit_like(status);
}

#ifdef OASIS_LIBRARY
/*
 * The warm child's way into a --box: join its cgroups, then each namespace
 * open on an --enter-ns FD (the mount namespace last: it moves our root), and
 * take the same last steps as a program under oasis-init (limits, uid drop,
 * seccomp). The caller was forked into the box's pid namespace already.
 * Returns PROGRAM's environment (the --env values, NULL-terminated) for the
 * caller to install; a failed step exits 125 like the command does. The
 * namespace and root options are the box's, and ignored here.
 */
char **oasis_enter(int argc, char **argv) {
    if (argc > 2 && strcmp(argv[1], "--args-fd") == 0) argv = expand_args_fd(argc, argv, &argc);
    static struct options o;
    parse_options(argc, argv, &o);
    /* Entering a box always drops to a session uid under seccomp: refuse less. */
    if (o.uid <= 0 || o.gid <= 0 || !o.seccomp || o.n_enter_ns == 0)
        die_msg("oasis_enter", "needs --uid, --gid, --seccomp and --enter-ns");
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    for (int i = 0; i < o.n_cgroups; i++) join_cgroup(o.cgroups[i]);
    char cwd[4096];
    if (!getcwd(cwd, sizeof cwd)) die("getcwd");
    for (int i = 0; i < o.n_enter_ns; i++) {
        if (setns(o.enter_ns[i], 0) != 0) die("enter namespace");
        close(o.enter_ns[i]);
    }
    /* The same path inside: the workspace is bound where it lies on the host. */
    if (chdir(cwd) != 0) die(cwd);
    enter_program(&o);
    uid_t ruid, euid, suid;
    if (getresuid(&ruid, &euid, &suid) != 0 || ruid == 0 || euid == 0 || suid == 0 ||
        prctl(PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0) != 1 || prctl(PR_GET_SECCOMP, 0, 0, 0, 0) != 2)
        die_msg("oasis_enter", "privileges were not dropped");
    /* As after an exec: the code may read its own /proc entries (ptrace stays denied). */
    prctl(PR_SET_DUMPABLE, 1);
    /* The options (host paths, cgroup folders) must not stay in the code's memory:
       keep a copy of the environment, then wipe them. */
    char **env = calloc((size_t)o.n_env + 1, sizeof *env);
    if (!env) die("calloc");
    for (int i = 0; i < o.n_env; i++)
        if (!(env[i] = strdup(o.env[i]))) die("strdup");
    if (args_buffer) {
        explicit_bzero(args_buffer, MAX_ARGS_BYTES + 1);
        free(args_buffer);
        args_buffer = NULL;
    }
    explicit_bzero(&o, sizeof o);
    return env;
}
#else
int main(int argc, char **argv) {
    /* Not in the option table: --hold-netns is a mode of its own, and --args-fd
       comes first and splices the fd's options into the command line. */
    if (argc == 2 && strcmp(argv[1], "--hold-netns") == 0) return hold_netns();
    if (argc > 2 && strcmp(argv[1], "--args-fd") == 0) argv = expand_args_fd(argc, argv, &argc);
    struct options o;
    parse_options(argc, argv, &o);
    confine(&o);
    execve(o.argv[0], o.argv, (char **)o.env);
    fprintf(stderr, "oasis-init: cannot run %s: %s\n", o.argv[0], strerror(errno));
    _exit(127);
}
#endif
