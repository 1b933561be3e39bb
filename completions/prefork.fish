# Print an optspec for argparse to handle cmd's options that are independent of any subcommand.
function __fish_prefork_global_optspecs
    string join \n h/help V/version
end

function __fish_prefork_needs_command
    # Figure out if the current invocation already has a command.
    set -l cmd (commandline -opc)
    set -e cmd[1]
    argparse -s (__fish_prefork_global_optspecs) -- $cmd 2>/dev/null
    or return
    if set -q argv[1]
        # Also print the command, so this can be used to figure out what it is.
        echo $argv[1]
        return 1
    end
    return 0
end

function __fish_prefork_using_subcommand
    set -l cmd (__fish_prefork_needs_command)
    test -z "$cmd"
    and return 1
    contains -- $cmd[1] $argv
end

complete -c prefork -n "__fish_prefork_needs_command" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c prefork -n "__fish_prefork_needs_command" -s V -l version -d 'Print version'
complete -c prefork -n "__fish_prefork_needs_command" -f -a "serve" -d 'Start the master and its workers and serve until stopped by a signal'
complete -c prefork -n "__fish_prefork_needs_command" -f -a "run" -d 'Run a program of any language as the workers, on sockets the master binds'
complete -c prefork -n "__fish_prefork_needs_command" -f -a "check" -d 'Validate the configuration serve would use, without starting anything'
complete -c prefork -n "__fish_prefork_using_subcommand serve" -s b -l bind -d 'Address to listen on: HOST:PORT, [V6]:PORT or unix:PATH; https://HOST:PORT or https://unix:PATH serves TLS there (see --certfile). Repeat for several, or separate them with commas. [default: 127.0.0.1:8000, or 0.0.0.0:$PORT when PORT is set]' -r
complete -c prefork -n "__fish_prefork_using_subcommand serve" -s w -l workers -d 'Number of worker processes. [default: $WEB_CONCURRENCY, else the number of CPUs]' -r -f
complete -c prefork -n "__fish_prefork_using_subcommand serve" -l threads -d 'Runtime threads per worker: 1 runs a current-thread runtime, more a multi-thread one. [default: 1]' -r -f
complete -c prefork -n "__fish_prefork_using_subcommand serve" -l worker-connections -d 'Connections one worker holds at most; at the limit it leaves new ones in the queue for its siblings until one of its own closes. [default: 1000]' -r -f
complete -c prefork -n "__fish_prefork_using_subcommand serve" -l graceful-timeout -d 'How long a graceful stop (TERM) may take, from the start of the drain (after any shutdown delay), before what is left is cut. Durations are written 30, 30s, 500ms, 2m or 1h. [default: 30s]' -r -f
complete -c prefork -n "__fish_prefork_using_subcommand serve" -l timeout -d 'Kill and replace a worker whose runtime sent no heartbeat for this long (a handler blocking its thread); 0 turns the check off. [default: 30s]' -r -f
complete -c prefork -n "__fish_prefork_using_subcommand serve" -l reload-timeout -d 'How long a reload (HUP) waits for the new workers to be ready before it gives up and keeps the old ones. [default: 30s]' -r -f
complete -c prefork -n "__fish_prefork_using_subcommand serve" -l max-requests -d 'Replace a worker after it served this many requests (its replacement is ready first); 0 means never. [default: 0]' -r -f
complete -c prefork -n "__fish_prefork_using_subcommand serve" -l max-requests-jitter -d 'Add up to this many requests, at random, to each worker\'s max requests, so workers do not all retire at once. [default: 0]' -r -f
complete -c prefork -n "__fish_prefork_using_subcommand serve" -l backlog -d 'Length of each listener\'s accept queue. [default: 2048]' -r -f
complete -c prefork -n "__fish_prefork_using_subcommand serve" -l keepalive -d 'How long an idle keep-alive connection waits for its next request (an HTTP/2 one is then sent GOAWAY); also bounds how long a client may take to send request headers. 0 turns HTTP/1 keep-alive off (idle HTTP/2 connections then get 30s). [default: 5s]' -r -f
complete -c prefork -n "__fish_prefork_using_subcommand serve" -l io-timeout -d 'Close a connection whose client makes no progress for this long in the middle of a request or a response: reads nothing of its response, keeps an HTTP/2 stream\'s flow-control window shut, or stops sending a request body the application waits for; 0 turns it off. [default: 60s]' -r -f
complete -c prefork -n "__fish_prefork_using_subcommand serve" -l linger -d 'How long a draining worker keeps idle keep-alive connections open for a request that may already be on its way (served with Connection: close). [default: 1s]' -r -f
complete -c prefork -n "__fish_prefork_using_subcommand serve" -l shutdown-delay -d 'After TERM, keep serving normally this long, with the health path answering 503, so load balancers stop sending traffic before the drain begins. The graceful timeout starts after it. [default: 0]' -r -f
complete -c prefork -n "__fish_prefork_using_subcommand serve" -l health-path -d 'A path prefork answers itself: 200 while serving, 503 once a stop is requested (for load balancer health checks), e.g. /healthz. [default: none]' -r
complete -c prefork -n "__fish_prefork_using_subcommand serve" -l forwarded-allow-ips -d 'Peers whose Forwarded, X-Forwarded-For and X-Forwarded-Proto headers are believed: addresses and ranges (10.0.0.0/8), unix for unix sockets, * for any, comma-separated. [default: 127.0.0.1,::1]' -r
complete -c prefork -n "__fish_prefork_using_subcommand serve" -l proxy-protocol -d 'Every connection starts with a PROXY protocol header (version 1 or 2), as HAProxy, AWS NLB and many ingress controllers send; its source address is the client\'s. [default: false]' -r -f
complete -c prefork -n "__fish_prefork_using_subcommand serve" -l certfile -d 'Serve TLS with this certificate: a PEM file, the server\'s certificate first, then its chain. Needs --keyfile. Repeat --certfile and --keyfile in pairs for several certificates, chosen by the name the client asks for (SNI); the first serves any other name. [default: none (cleartext)]' -r -F
complete -c prefork -n "__fish_prefork_using_subcommand serve" -l keyfile -d 'The private key of --certfile: a PEM file, PKCS#8, PKCS#1 (RSA) or SEC1 (EC); one for each --certfile, in the same order. [default: none]' -r -F
complete -c prefork -n "__fish_prefork_using_subcommand serve" -l ca-certs -d 'Ask TLS clients for a certificate signed by one of these (a PEM file): mutual TLS. See --client-certs. [default: none]' -r -F
complete -c prefork -n "__fish_prefork_using_subcommand serve" -l client-certs -d 'Client certificates: none (not asked for), optional (a client without one is served, one with a bad one refused) or required (a client without a valid one is refused in the handshake). [default: required with --ca-certs, else none]' -r
complete -c prefork -n "__fish_prefork_using_subcommand serve" -l metrics-bind -d 'Serve Prometheus metrics at /metrics on this address of their own (HOST:PORT or unix:PATH), never on the application\'s. [default: none]' -r
complete -c prefork -n "__fish_prefork_using_subcommand serve" -l limit-request-line -d 'Longest HTTP/1 request line accepted, in bytes (method, target and version, without the line end); a longer one is answered 414 and the connection closed. 0 leaves only the bound on the whole request head (64 KiB). [default: 4094]' -r -f
complete -c prefork -n "__fish_prefork_using_subcommand serve" -l limit-request-fields -d 'Most header fields a request may have (from 1 to 32768); more are answered 431 and the connection closed. [default: 100]' -r -f
complete -c prefork -n "__fish_prefork_using_subcommand serve" -l limit-request-field-size -d 'Longest header field accepted, in bytes (its name plus its value); a longer one is answered 431 and the connection closed. 0 leaves only the bound on the whole request head (64 KiB). [default: 8190]' -r -f
complete -c prefork -n "__fish_prefork_using_subcommand serve" -l http2-max-concurrent-streams -d 'Most streams an HTTP/2 client may have open at once on one connection; a stream past it is refused (RST_STREAM REFUSED_STREAM). [default: 100]' -r -f
complete -c prefork -n "__fish_prefork_using_subcommand serve" -s u -l user -d 'Run the workers as this user (name or uid), with its supplementary groups; the master keeps the privileges it started with. [default: the user that started prefork]' -r
complete -c prefork -n "__fish_prefork_using_subcommand serve" -s g -l group -d 'Run the workers as this group (name or gid); with a user alone, the user\'s own group. The master keeps its own. [default: the group that started prefork]' -r
complete -c prefork -n "__fish_prefork_using_subcommand serve" -l umask -d 'File mode creation mask, in octal, set at start. [default: the inherited one]' -r
complete -c prefork -n "__fish_prefork_using_subcommand serve" -l bind-mode -d 'Mode of unix socket files, in octal (e.g. 660); their owner is the user and group prefork runs as. [default: from the umask]' -r
complete -c prefork -n "__fish_prefork_using_subcommand serve" -s p -l pid -d 'Write the master\'s pid to this file once the sockets are bound (refused if it names a running process); removed at exit. [default: none]' -r -F
complete -c prefork -n "__fish_prefork_using_subcommand serve" -l root -d 'Directory served by the built-in static file app. [default: .]' -r -f -a "(__fish_complete_directories)"
complete -c prefork -n "__fish_prefork_using_subcommand serve" -l follow-symlinks -d 'Let the static file app follow symbolic links wherever they lead, as nginx does by default. [default: false]' -r -f
complete -c prefork -n "__fish_prefork_using_subcommand serve" -l serve-hidden -d 'Let the static file app serve hidden files and directories, whose names start with a dot (.env, .git/). [default: false]' -r -f
complete -c prefork -n "__fish_prefork_using_subcommand serve" -l log-level -d 'Most verbose level logged: error, warn, info, debug or trace. [default: info]' -r
complete -c prefork -n "__fish_prefork_using_subcommand serve" -l log-format -d 'How log lines are written: text, or json (one object per line, for the error log and the access log). [default: text]' -r
complete -c prefork -n "__fish_prefork_using_subcommand serve" -l error-logfile -d 'Where the master and workers log events: a file (appended to, reopened on USR1) or - for standard error. [default: -]' -r -F
complete -c prefork -n "__fish_prefork_using_subcommand serve" -l access-logfile -d 'Where workers log one line per request (combined log format plus the seconds the response took to start): a file (appended to, reopened on USR1) or - for standard output. [default: none]' -r -F
complete -c prefork -n "__fish_prefork_using_subcommand serve" -s c -l config -d 'TOML config file whose keys are the option names above, with underscores (graceful_timeout = "10s")' -r -F
complete -c prefork -n "__fish_prefork_using_subcommand serve" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c prefork -n "__fish_prefork_using_subcommand serve" -s V -l version -d 'Print version'
complete -c prefork -n "__fish_prefork_using_subcommand run" -s b -l bind -d 'Address to listen on: HOST:PORT, [V6]:PORT or unix:PATH; https://HOST:PORT or https://unix:PATH serves TLS there (see --certfile). Repeat for several, or separate them with commas. [default: 127.0.0.1:8000, or 0.0.0.0:$PORT when PORT is set]' -r
complete -c prefork -n "__fish_prefork_using_subcommand run" -s w -l workers -d 'Number of worker processes. [default: $WEB_CONCURRENCY, else the number of CPUs]' -r -f
complete -c prefork -n "__fish_prefork_using_subcommand run" -l graceful-timeout -d 'How long a graceful stop (TERM) may take, from the start of the drain (after any shutdown delay), before what is left is cut. Durations are written 30, 30s, 500ms, 2m or 1h. [default: 30s]' -r -f
complete -c prefork -n "__fish_prefork_using_subcommand run" -l timeout -d 'Kill and replace a worker whose runtime sent no heartbeat for this long (a handler blocking its thread); 0 turns the check off. [default: 30s]' -r -f
complete -c prefork -n "__fish_prefork_using_subcommand run" -l reload-timeout -d 'How long a reload (HUP) waits for the new workers to be ready before it gives up and keeps the old ones. [default: 30s]' -r -f
complete -c prefork -n "__fish_prefork_using_subcommand run" -l backlog -d 'Length of each listener\'s accept queue. [default: 2048]' -r -f
complete -c prefork -n "__fish_prefork_using_subcommand run" -l shutdown-delay -d 'After TERM, keep serving normally this long, with the health path answering 503, so load balancers stop sending traffic before the drain begins. The graceful timeout starts after it. [default: 0]' -r -f
complete -c prefork -n "__fish_prefork_using_subcommand run" -l worker-stop-signal -d 'The signal that asks a program to stop gracefully (TERM, INT, QUIT, ...); its whole process group is killed at the graceful timeout. [default: TERM]' -r
complete -c prefork -n "__fish_prefork_using_subcommand run" -l ready-after -d 'A program that has not sent READY=1 to its NOTIFY_SOCKET is taken as ready this long after it started, if it is still running; 0: only READY=1 makes it ready. [default: 1s]' -r -f
complete -c prefork -n "__fish_prefork_using_subcommand run" -l prefix-output -d 'Prefix each line a program writes to standard output or error with its worker\'s slot, as process managers do. [default: false]' -r -f
complete -c prefork -n "__fish_prefork_using_subcommand run" -s u -l user -d 'Run the workers as this user (name or uid), with its supplementary groups; the master keeps the privileges it started with. [default: the user that started prefork]' -r
complete -c prefork -n "__fish_prefork_using_subcommand run" -s g -l group -d 'Run the workers as this group (name or gid); with a user alone, the user\'s own group. The master keeps its own. [default: the group that started prefork]' -r
complete -c prefork -n "__fish_prefork_using_subcommand run" -l umask -d 'File mode creation mask, in octal, set at start. [default: the inherited one]' -r
complete -c prefork -n "__fish_prefork_using_subcommand run" -l bind-mode -d 'Mode of unix socket files, in octal (e.g. 660); their owner is the user and group prefork runs as. [default: from the umask]' -r
complete -c prefork -n "__fish_prefork_using_subcommand run" -s p -l pid -d 'Write the master\'s pid to this file once the sockets are bound (refused if it names a running process); removed at exit. [default: none]' -r -F
complete -c prefork -n "__fish_prefork_using_subcommand run" -l log-level -d 'Most verbose level logged: error, warn, info, debug or trace. [default: info]' -r
complete -c prefork -n "__fish_prefork_using_subcommand run" -l log-format -d 'How log lines are written: text, or json (one object per line, for the error log and the access log). [default: text]' -r
complete -c prefork -n "__fish_prefork_using_subcommand run" -l error-logfile -d 'Where the master and workers log events: a file (appended to, reopened on USR1) or - for standard error. [default: -]' -r -F
complete -c prefork -n "__fish_prefork_using_subcommand run" -s c -l config -d 'TOML config file whose keys are the option names above, with underscores (graceful_timeout = "10s")' -r -F
complete -c prefork -n "__fish_prefork_using_subcommand run" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c prefork -n "__fish_prefork_using_subcommand run" -s V -l version -d 'Print version'
complete -c prefork -n "__fish_prefork_using_subcommand check" -s b -l bind -d 'Address to listen on: HOST:PORT, [V6]:PORT or unix:PATH; https://HOST:PORT or https://unix:PATH serves TLS there (see --certfile). Repeat for several, or separate them with commas. [default: 127.0.0.1:8000, or 0.0.0.0:$PORT when PORT is set]' -r
complete -c prefork -n "__fish_prefork_using_subcommand check" -s w -l workers -d 'Number of worker processes. [default: $WEB_CONCURRENCY, else the number of CPUs]' -r -f
complete -c prefork -n "__fish_prefork_using_subcommand check" -l threads -d 'Runtime threads per worker: 1 runs a current-thread runtime, more a multi-thread one. [default: 1]' -r -f
complete -c prefork -n "__fish_prefork_using_subcommand check" -l worker-connections -d 'Connections one worker holds at most; at the limit it leaves new ones in the queue for its siblings until one of its own closes. [default: 1000]' -r -f
complete -c prefork -n "__fish_prefork_using_subcommand check" -l graceful-timeout -d 'How long a graceful stop (TERM) may take, from the start of the drain (after any shutdown delay), before what is left is cut. Durations are written 30, 30s, 500ms, 2m or 1h. [default: 30s]' -r -f
complete -c prefork -n "__fish_prefork_using_subcommand check" -l timeout -d 'Kill and replace a worker whose runtime sent no heartbeat for this long (a handler blocking its thread); 0 turns the check off. [default: 30s]' -r -f
complete -c prefork -n "__fish_prefork_using_subcommand check" -l reload-timeout -d 'How long a reload (HUP) waits for the new workers to be ready before it gives up and keeps the old ones. [default: 30s]' -r -f
complete -c prefork -n "__fish_prefork_using_subcommand check" -l max-requests -d 'Replace a worker after it served this many requests (its replacement is ready first); 0 means never. [default: 0]' -r -f
complete -c prefork -n "__fish_prefork_using_subcommand check" -l max-requests-jitter -d 'Add up to this many requests, at random, to each worker\'s max requests, so workers do not all retire at once. [default: 0]' -r -f
complete -c prefork -n "__fish_prefork_using_subcommand check" -l backlog -d 'Length of each listener\'s accept queue. [default: 2048]' -r -f
complete -c prefork -n "__fish_prefork_using_subcommand check" -l keepalive -d 'How long an idle keep-alive connection waits for its next request (an HTTP/2 one is then sent GOAWAY); also bounds how long a client may take to send request headers. 0 turns HTTP/1 keep-alive off (idle HTTP/2 connections then get 30s). [default: 5s]' -r -f
complete -c prefork -n "__fish_prefork_using_subcommand check" -l io-timeout -d 'Close a connection whose client makes no progress for this long in the middle of a request or a response: reads nothing of its response, keeps an HTTP/2 stream\'s flow-control window shut, or stops sending a request body the application waits for; 0 turns it off. [default: 60s]' -r -f
complete -c prefork -n "__fish_prefork_using_subcommand check" -l linger -d 'How long a draining worker keeps idle keep-alive connections open for a request that may already be on its way (served with Connection: close). [default: 1s]' -r -f
complete -c prefork -n "__fish_prefork_using_subcommand check" -l shutdown-delay -d 'After TERM, keep serving normally this long, with the health path answering 503, so load balancers stop sending traffic before the drain begins. The graceful timeout starts after it. [default: 0]' -r -f
complete -c prefork -n "__fish_prefork_using_subcommand check" -l worker-stop-signal -d 'The signal that asks a program to stop gracefully (TERM, INT, QUIT, ...); its whole process group is killed at the graceful timeout. [default: TERM]' -r
complete -c prefork -n "__fish_prefork_using_subcommand check" -l ready-after -d 'A program that has not sent READY=1 to its NOTIFY_SOCKET is taken as ready this long after it started, if it is still running; 0: only READY=1 makes it ready. [default: 1s]' -r -f
complete -c prefork -n "__fish_prefork_using_subcommand check" -l prefix-output -d 'Prefix each line a program writes to standard output or error with its worker\'s slot, as process managers do. [default: false]' -r -f
complete -c prefork -n "__fish_prefork_using_subcommand check" -l health-path -d 'A path prefork answers itself: 200 while serving, 503 once a stop is requested (for load balancer health checks), e.g. /healthz. [default: none]' -r
complete -c prefork -n "__fish_prefork_using_subcommand check" -l forwarded-allow-ips -d 'Peers whose Forwarded, X-Forwarded-For and X-Forwarded-Proto headers are believed: addresses and ranges (10.0.0.0/8), unix for unix sockets, * for any, comma-separated. [default: 127.0.0.1,::1]' -r
complete -c prefork -n "__fish_prefork_using_subcommand check" -l proxy-protocol -d 'Every connection starts with a PROXY protocol header (version 1 or 2), as HAProxy, AWS NLB and many ingress controllers send; its source address is the client\'s. [default: false]' -r -f
complete -c prefork -n "__fish_prefork_using_subcommand check" -l certfile -d 'Serve TLS with this certificate: a PEM file, the server\'s certificate first, then its chain. Needs --keyfile. Repeat --certfile and --keyfile in pairs for several certificates, chosen by the name the client asks for (SNI); the first serves any other name. [default: none (cleartext)]' -r -F
complete -c prefork -n "__fish_prefork_using_subcommand check" -l keyfile -d 'The private key of --certfile: a PEM file, PKCS#8, PKCS#1 (RSA) or SEC1 (EC); one for each --certfile, in the same order. [default: none]' -r -F
complete -c prefork -n "__fish_prefork_using_subcommand check" -l ca-certs -d 'Ask TLS clients for a certificate signed by one of these (a PEM file): mutual TLS. See --client-certs. [default: none]' -r -F
complete -c prefork -n "__fish_prefork_using_subcommand check" -l client-certs -d 'Client certificates: none (not asked for), optional (a client without one is served, one with a bad one refused) or required (a client without a valid one is refused in the handshake). [default: required with --ca-certs, else none]' -r
complete -c prefork -n "__fish_prefork_using_subcommand check" -l metrics-bind -d 'Serve Prometheus metrics at /metrics on this address of their own (HOST:PORT or unix:PATH), never on the application\'s. [default: none]' -r
complete -c prefork -n "__fish_prefork_using_subcommand check" -l limit-request-line -d 'Longest HTTP/1 request line accepted, in bytes (method, target and version, without the line end); a longer one is answered 414 and the connection closed. 0 leaves only the bound on the whole request head (64 KiB). [default: 4094]' -r -f
complete -c prefork -n "__fish_prefork_using_subcommand check" -l limit-request-fields -d 'Most header fields a request may have (from 1 to 32768); more are answered 431 and the connection closed. [default: 100]' -r -f
complete -c prefork -n "__fish_prefork_using_subcommand check" -l limit-request-field-size -d 'Longest header field accepted, in bytes (its name plus its value); a longer one is answered 431 and the connection closed. 0 leaves only the bound on the whole request head (64 KiB). [default: 8190]' -r -f
complete -c prefork -n "__fish_prefork_using_subcommand check" -l http2-max-concurrent-streams -d 'Most streams an HTTP/2 client may have open at once on one connection; a stream past it is refused (RST_STREAM REFUSED_STREAM). [default: 100]' -r -f
complete -c prefork -n "__fish_prefork_using_subcommand check" -s u -l user -d 'Run the workers as this user (name or uid), with its supplementary groups; the master keeps the privileges it started with. [default: the user that started prefork]' -r
complete -c prefork -n "__fish_prefork_using_subcommand check" -s g -l group -d 'Run the workers as this group (name or gid); with a user alone, the user\'s own group. The master keeps its own. [default: the group that started prefork]' -r
complete -c prefork -n "__fish_prefork_using_subcommand check" -l umask -d 'File mode creation mask, in octal, set at start. [default: the inherited one]' -r
complete -c prefork -n "__fish_prefork_using_subcommand check" -l bind-mode -d 'Mode of unix socket files, in octal (e.g. 660); their owner is the user and group prefork runs as. [default: from the umask]' -r
complete -c prefork -n "__fish_prefork_using_subcommand check" -s p -l pid -d 'Write the master\'s pid to this file once the sockets are bound (refused if it names a running process); removed at exit. [default: none]' -r -F
complete -c prefork -n "__fish_prefork_using_subcommand check" -l root -d 'Directory served by the built-in static file app. [default: .]' -r -f -a "(__fish_complete_directories)"
complete -c prefork -n "__fish_prefork_using_subcommand check" -l follow-symlinks -d 'Let the static file app follow symbolic links wherever they lead, as nginx does by default. [default: false]' -r -f
complete -c prefork -n "__fish_prefork_using_subcommand check" -l serve-hidden -d 'Let the static file app serve hidden files and directories, whose names start with a dot (.env, .git/). [default: false]' -r -f
complete -c prefork -n "__fish_prefork_using_subcommand check" -l log-level -d 'Most verbose level logged: error, warn, info, debug or trace. [default: info]' -r
complete -c prefork -n "__fish_prefork_using_subcommand check" -l log-format -d 'How log lines are written: text, or json (one object per line, for the error log and the access log). [default: text]' -r
complete -c prefork -n "__fish_prefork_using_subcommand check" -l error-logfile -d 'Where the master and workers log events: a file (appended to, reopened on USR1) or - for standard error. [default: -]' -r -F
complete -c prefork -n "__fish_prefork_using_subcommand check" -l access-logfile -d 'Where workers log one line per request (combined log format plus the seconds the response took to start): a file (appended to, reopened on USR1) or - for standard output. [default: none]' -r -F
complete -c prefork -n "__fish_prefork_using_subcommand check" -s c -l config -d 'TOML config file whose keys are the option names above, with underscores (graceful_timeout = "10s")' -r -F
complete -c prefork -n "__fish_prefork_using_subcommand check" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c prefork -n "__fish_prefork_using_subcommand check" -s V -l version -d 'Print version'
