/* A floor for bench/suite.py's PTY row (8): a remote terminal with no protocol at all.
 *
 *     cc -O2 -o pty_relay bench/pty_relay.c -lutil
 *     pty_relay pair [PROGRAM [ARG0]]      # PROGRAM defaults to bash, ARG0 to -bash (a login shell)
 *
 * What every remote shell does, and nothing else: the process started is the client, on the
 * caller's terminal, which it puts in raw mode. It listens on a free 127.0.0.1 port and forks the
 * server (a new session, its stdin, stdout and stderr on /dev/null, so it holds nothing of the
 * caller's terminal), which connects back, starts PROGRAM on a new PTY (forkpty) and relays
 * bytes between that PTY's master and the socket. The client relays between its terminal and
 * the socket. No framing, no authentication, no encryption, one read and one write a hop, in C.
 * Three processes (client, server, shell) and two PTYs, as `ssh -tt host` has.
 *
 * The shell's end of file (EIO on the master) ends the server, which closes the socket and
 * reaps the shell; the client then restores its terminal, reaps the server and exits 0, or 1
 * when something failed. bench/pty_relay.py is the same in Python.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pty.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <termios.h>
#include <unistd.h>

static int write_all(int fd, const char *buf, ssize_t n) {
    while (n > 0) {
        ssize_t w = write(fd, buf, (size_t)n);
        if (w < 0)
            return -1;
        buf += w;
        n -= w;
    }
    return 0;
}

/* Move bytes both ways until either side ends: a_in -> s, s -> a_out. */
static int relay(int a_in, int a_out, int s) {
    static char buf[65536];
    struct pollfd p[2] = {{a_in, POLLIN, 0}, {s, POLLIN, 0}};
    for (;;) {
        if (poll(p, 2, -1) < 0)
            return -1;
        if (p[0].revents) {
            ssize_t n = read(a_in, buf, sizeof buf);
            if (n <= 0)
                return 0; /* the shell's EIO, or the terminal's end */
            if (write_all(s, buf, n))
                return -1;
        }
        if (p[1].revents) {
            ssize_t n = read(s, buf, sizeof buf);
            if (n <= 0)
                return 0;
            if (write_all(a_out, buf, n))
                return -1;
        }
    }
}

static int server(int port, const char *program, const char *arg0) {
    int one = 1, devnull = open("/dev/null", O_RDWR);
    if (devnull < 0 || setsid() < 0)
        return 1;
    dup2(devnull, 0), dup2(devnull, 1), dup2(devnull, 2);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    int s = socket(AF_INET, SOCK_STREAM, 0);
    if (s < 0 || connect(s, (struct sockaddr *)&a, sizeof a) < 0)
        return 1;
    setsockopt(s, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    struct winsize ws = {.ws_row = 24, .ws_col = 80};
    int master;
    pid_t shell = forkpty(&master, NULL, NULL, &ws);
    if (shell < 0)
        return 1;
    if (shell == 0) {
        close(s);
        execlp(program, arg0, (char *)NULL);
        _exit(127);
    }
    int r = relay(master, master, s);
    close(s);
    close(master);
    waitpid(shell, NULL, 0);
    return r < 0;
}

int main(int argc, char **argv) {
    if (argc < 2 || strcmp(argv[1], "pair") != 0) {
        fprintf(stderr, "usage: %s pair [PROGRAM [ARG0]]\n", argv[0]);
        return 2;
    }
    const char *program = argc > 2 ? argv[2] : "bash";
    const char *arg0 = argc > 3 ? argv[3] : "-bash";
    int one = 1;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof a;
    int l = socket(AF_INET, SOCK_STREAM, 0);
    if (l < 0 || bind(l, (struct sockaddr *)&a, sizeof a) < 0 || listen(l, 1) < 0 ||
        getsockname(l, (struct sockaddr *)&a, &len) < 0) {
        perror("pty_relay: listen");
        return 1;
    }
    pid_t srv = fork();
    if (srv < 0) {
        perror("pty_relay: fork");
        return 1;
    }
    if (srv == 0) {
        close(l);
        _exit(server(ntohs(a.sin_port), program, arg0));
    }
    int s = accept(l, NULL, NULL);
    close(l);
    if (s < 0) {
        perror("pty_relay: accept");
        return 1;
    }
    setsockopt(s, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    struct termios saved, raw;
    int tty = tcgetattr(0, &saved) == 0;
    if (tty) {
        raw = saved;
        cfmakeraw(&raw);
        tcsetattr(0, TCSADRAIN, &raw);
    }
    int r = relay(0, 1, s);
    if (tty)
        tcsetattr(0, TCSADRAIN, &saved);
    close(s);
    int status = 0;
    waitpid(srv, &status, 0);
    return r < 0 || !WIFEXITED(status) || WEXITSTATUS(status) != 0;
}
