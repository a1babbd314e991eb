//! The configuration's tests: the seed's flags, layering, errors.

use super::*;

fn args(a: &[&str]) -> Vec<String> {
    a.iter().map(|s| s.to_string()).collect()
}

/// The flags as `steward` parses them; the error's text, for tests of what it says.
fn flags(a: &[&str]) -> Result<Flags, Error> {
    let normalized = normalize_args(&args(a))?;
    let refs: Vec<&str> = normalized.iter().map(String::as_str).collect();
    Ok(Flags::from_args(&["steward"], &refs).expect("flags argh takes"))
}

fn parse(a: &[&str]) -> Result<Config, Error> {
    Config::from_flags(flags(a)?)
}

#[test]
fn seed_invocations_work_as_written() {
    let c = parse(&["--node=\"ship1\"".replace('"', "").as_str()]).unwrap();
    assert_eq!(c.node, "ship1");
    let c = parse(&[
        "--node=central",
        "--brokerAddress=127.0.0.1:4222",
        "-centralErrorLogger",
    ])
    .unwrap();
    assert_eq!(c.brokers, ["nats://127.0.0.1:4222"]);
    assert!(c.central_error_logger);
    let c = parse(&[
        "-node",
        "ship2",
        "-defaultMessageTimeout",
        "3",
        "-defaultMessageRetries=5",
    ])
    .unwrap();
    assert_eq!(
        (
            c.node.as_str(),
            c.default_timeout.as_secs(),
            c.default_retries
        ),
        ("ship2", 3, 5)
    );
    let c = parse(&[
        "--node",
        "x",
        "--centralErrorLogger=false",
        "--promHostAndPort",
        ":2112",
    ])
    .unwrap();
    assert!(!c.central_error_logger);
    assert_eq!(c.prom_addr.as_deref(), Some("0.0.0.0:2112"));
    // Go's flag package takes strconv.ParseBool's words for a switch.
    for (value, on) in [
        ("1", true),
        ("True", true),
        ("t", true),
        ("0", false),
        ("F", false),
    ] {
        let c = parse(&["--node=x", &format!("-centralErrorLogger={value}")]).unwrap();
        assert_eq!(c.central_error_logger, on, "{value}");
    }
}

#[test]
fn broker_lists_and_defaults() {
    let c = parse(&[
        "--node",
        "a",
        "--brokerAddress",
        "10.0.0.1:4222, nats://b:4223,4224",
    ])
    .unwrap();
    assert_eq!(
        c.brokers,
        [
            "nats://10.0.0.1:4222",
            "nats://b:4223",
            "nats://127.0.0.1:4224"
        ]
    );
    assert_eq!(
        c.allow_commands_from,
        [Allow {
            from: "central".into(),
            methods: None
        }]
    );
    assert_eq!(c.replay_window, Duration::from_secs(300));
    assert_eq!(c.profiling_addr, None);
    let c = parse(&[
        "--node",
        "a",
        "--profilingPort",
        "6060",
        "--promHostAndPort",
        "off",
    ])
    .unwrap();
    assert_eq!(c.profiling_addr.as_deref(), Some("127.0.0.1:6060"));
    assert_eq!(c.prom_addr, None);
}

#[test]
fn bad_values_name_the_flag() {
    let e = |a: &[&str]| parse(a).unwrap_err().to_string();
    assert!(e(&["--node", "ship 1"]).contains("--node"));
    assert!(e(&["--node", "a.b"]).contains("--node"));
    assert_eq!(
        e(&["--node", "a", "--defaultMessageTimeout", "0"]),
        "--defaultMessageTimeout: 0 is not between 1 and 604800 seconds"
    );
    assert!(e(&["--node", "a", "--centralErrorLogger=yes"]).contains("centralErrorLogger"));
    // "For ever" written as the largest number: it wrapped to a single attempt.
    let err = e(&["--node", "a", "--defaultMessageRetries", "4294967295"]);
    assert!(err.contains("at most 1000000"), "{err}");
    assert_eq!(
        parse(&["--node", "a", "--defaultMessageRetries", "1000000"])
            .unwrap()
            .default_retries,
        1_000_000
    );
    assert!(e(&["--node", "a", "--allowCommandsFrom", "x,*"]).contains("--allowCommandsFrom"));
    let err = e(&["--node", "a", "--allowCommandsFrom", "ops:CLIcommand"]);
    assert!(err.contains("unknown method \"CLIcommand\""), "{err}");
    assert_eq!(
        e(&["--node", "a", "--brokerAddress", ","]),
        "--brokerAddress: no broker address given"
    );
    // A replay window whose milliseconds would overflow (it became 384 ms).
    let err = e(&["--node", "a", "--replayWindow", "18446744073709552"]);
    assert!(
        err.starts_with("--replayWindow: ") && err.contains("at most"),
        "{err}"
    );
    assert!(parse(&["--node", "a", "--replayWindow", "31622400"]).is_ok());
    // A ping interval of none, or so long that two of them overflow a duration.
    assert_eq!(
        e(&["--node", "a", "--brokerPingInterval", "0"]),
        "--brokerPingInterval: 0 seconds: between 1 and 86400 (a day; a link silent for two of them is taken as cut)"
    );
    let err = e(&[
        "--node",
        "a",
        "--brokerPingInterval",
        "18446744073709551615",
    ]);
    assert!(err.contains("between 1 and 86400"), "{err}");
    let c = parse(&["--node", "a", "--brokerPingInterval", "86400"]).unwrap();
    assert_eq!(c.broker_ping_interval, Duration::from_secs(86400));
    assert_eq!(
        parse(&["--node", "a"]).unwrap().broker_ping_interval,
        Duration::from_secs(30)
    );
    // A whole number out of the option's range is not said to be no number.
    let err = e(&["--node", "a", "--maxPublishers", "100000000000000000000"]);
    assert!(err.contains("past the largest number"), "{err}");
    // Typed: where, and what.
    assert!(matches!(
        parse(&["--node", "a", "--maxConcurrentHandlers", "lots"]),
        Err(Error::Value { at, problem: Problem::Number(text) })
            if at == "--maxConcurrentHandlers" && text == "lots"
    ));
}

#[test]
fn allow_rules_name_senders_and_their_methods() {
    let c = parse(&[
        "--node",
        "a",
        "--allowCommandsFrom",
        "central, ops:CLICommand+TextLogging",
    ])
    .unwrap();
    let allowed = |from: &str, method: &str| {
        c.allow_commands_from
            .iter()
            .any(|rule| rule.permits(from, method))
    };
    assert!(allowed("central", "CLICommand") && allowed("central", "TrustedKeys"));
    assert!(allowed("ops", "CLICommand") && !allowed("ops", "TrustedKeys"));
    assert!(!allowed("ship2", "CLICommand"));
    assert_eq!(
        c.allow_commands_from[1].to_string(),
        "ops:CLICommand+TextLogging"
    );
}

fn load(a: &[&str], env: &[(&str, &str)]) -> Result<Config, Error> {
    let flags = flags(a)?;
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Config::load(&flags, &|name| {
        env.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
    })
}

fn config_file(text: &str) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("steward.toml");
    std::fs::write(&path, text).unwrap();
    let path = path.to_str().unwrap().to_string();
    (dir, path)
}

#[test]
fn flags_win_over_environment_which_wins_over_the_file() {
    let (_dir, path) = config_file(
        "node = \"from-file\"\nbrokerAddress = [\"a:4222\", \"b:4222\"]\ndefaultMessageTimeout = 7\ndefaultMessageRetries = 9\ncentralErrorLogger = true\nhelloInterval = 0\n",
    );
    let c = load(&["--config", &path], &[]).unwrap();
    assert_eq!(c.node, "from-file");
    assert_eq!(c.brokers, ["nats://a:4222", "nats://b:4222"]);
    assert_eq!((c.default_timeout.as_secs(), c.default_retries), (7, 9));
    assert!(c.central_error_logger);
    assert_eq!(c.hello_interval, None);
    let env = [
        ("STEWARD_NODE", "from-env"),
        ("STEWARD_DEFAULT_MESSAGE_TIMEOUT", "8"),
    ];
    let c = load(&["--config", &path], &env).unwrap();
    assert_eq!(
        (
            c.node.as_str(),
            c.default_timeout.as_secs(),
            c.default_retries
        ),
        ("from-env", 8, 9)
    );
    let c = load(&["--config", &path, "--node=from-flag"], &env).unwrap();
    assert_eq!(
        (c.node.as_str(), c.default_timeout.as_secs()),
        ("from-flag", 8)
    );
    // The file can also be named by the environment.
    let c = load(&["--node=x"], &[("STEWARD_CONFIG", &path)]).unwrap();
    assert_eq!(c.default_retries, 9);
    // A switch said false on the command line wins too (the file says true).
    for off in ["-centralErrorLogger=false", "--centralErrorLogger=false"] {
        let c = load(&["--config", &path, off], &env).unwrap();
        assert!(!c.central_error_logger, "{off}");
    }
    let on = [("STEWARD_CENTRAL_ERROR_LOGGER", "true")];
    let c = load(&["--node=x", "-centralErrorLogger=false"], &on).unwrap();
    assert!(!c.central_error_logger);
}

#[test]
fn the_http_body_cap_layers_like_any_number_and_is_never_zero() {
    assert_eq!(
        load(&["--node=a"], &[]).unwrap().max_http_body_bytes,
        1 << 20
    );
    let (_dir, path) = config_file("maxHttpBodyBytes = 4096\n");
    let c = load(&["--node=a", "--config", &path], &[]).unwrap();
    assert_eq!(c.max_http_body_bytes, 4096);
    let env = [("STEWARD_MAX_HTTP_BODY_BYTES", "8192")];
    let c = load(&["--node=a", "--config", &path], &env).unwrap();
    assert_eq!(c.max_http_body_bytes, 8192);
    let c = load(
        &["--node=a", "-maxHttpBodyBytes=100", "--config", &path],
        &env,
    )
    .unwrap();
    assert_eq!(c.max_http_body_bytes, 100);
    let e = load(&["--node=a", "--maxHttpBodyBytes=0"], &[])
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("--maxHttpBodyBytes") && e.contains("at least 1"),
        "{e}"
    );
    let e = load(&["--node=a"], &[("STEWARD_MAX_HTTP_BODY_BYTES", "1 MiB")])
        .unwrap_err()
        .to_string();
    assert!(e.contains("STEWARD_MAX_HTTP_BODY_BYTES"), "{e}");
}

#[test]
fn config_errors_name_the_key_and_the_file() {
    let (_dir, path) = config_file("node = \"ship1\"\nbrokerAdress = \"x:4222\"\n");
    let e = load(&["--config", &path], &[]).unwrap_err().to_string();
    assert!(
        e.contains(&path) && e.contains("unknown key \"brokerAdress\""),
        "{e}"
    );
    assert!(!e.contains("version") && !e.contains("config,"), "{e}");
    // A flag of the command line alone is no key of the file.
    let (_dir, path) = config_file("node = \"ship1\"\nversion = true\n");
    let e = load(&["--config", &path], &[]).unwrap_err().to_string();
    assert!(e.contains("unknown key \"version\""), "{e}");
    let (_dir, path) = config_file("node = \"ship1\"\ndefaultMessageTimeout = \"ten\"\n");
    let e = load(&["--config", &path], &[]).unwrap_err().to_string();
    assert!(
        e.contains(&path) && e.contains("defaultMessageTimeout") && e.contains("\"ten\""),
        "{e}"
    );
    let (_dir, path) = config_file("node = \"ship 1\"\n");
    let e = load(&["--config", &path], &[]).unwrap_err().to_string();
    assert!(
        e.contains(&path) && e.contains("node") && e.contains("space"),
        "{e}"
    );
    let (_dir, path) = config_file("node = [1, 2]\n");
    assert!(load(&["--config", &path], &[])
        .unwrap_err()
        .to_string()
        .contains("only strings"));
    let (_dir, path) = config_file("node = \n");
    assert!(load(&["--config", &path], &[])
        .unwrap_err()
        .to_string()
        .contains(&path));
    let e = load(&["--config", "/no/such/steward.toml"], &[])
        .unwrap_err()
        .to_string();
    assert!(e.contains("/no/such/steward.toml"), "{e}");
    let e = load(
        &["--node=a"],
        &[("STEWARD_MAX_CONCURRENT_HANDLERS", "lots")],
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("STEWARD_MAX_CONCURRENT_HANDLERS"), "{e}");
}

#[test]
fn broker_security_options_are_checked_and_secrets_stay_out_of_debug() {
    let (_dir, pw) = config_file("s3cret\n");
    let c = load(
        &["--node=a", "--user=ship1", &format!("--passwordFile={pw}")],
        &[],
    )
    .unwrap();
    assert!(
        matches!(&c.security.auth, Auth::UserPassword { user, password } if user == "ship1" && password.expose() == "s3cret")
    );
    assert!(
        !format!("{c:?}").contains("s3cret"),
        "a secret in Debug output"
    );
    let c = load(&["--node=a"], &[("STEWARD_TOKEN", "tok")]).unwrap();
    assert!(matches!(&c.security.auth, Auth::Token(t) if t.expose() == "tok"));
    let e = load(&["--node=a", "--user=ship1"], &[])
        .unwrap_err()
        .to_string();
    assert!(e.contains("--user") && e.contains("password"), "{e}");
    let e = load(
        &["--node=a", "--user=ship1", &format!("--passwordFile={pw}")],
        &[("STEWARD_TOKEN", "tok")],
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("choose one way"), "{e}");
    let e = load(&["--node=a", &format!("--tlsCert={pw}")], &[])
        .unwrap_err()
        .to_string();
    assert!(e.contains("--tlsKey"), "{e}");
    let e = load(&["--node=a", "--tlsCA=/no/such/ca.pem"], &[])
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("--tlsCA") && e.contains("/no/such/ca.pem"),
        "{e}"
    );
    let e = load(&["--node=a", &format!("--nkeySeedFile={pw}")], &[])
        .unwrap_err()
        .to_string();
    assert!(e.contains("not an NKey seed"), "{e}");
}

#[test]
fn the_shipped_example_config_is_valid() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/systemd/steward.toml");
    let c = load(&["--config", path], &[]).unwrap();
    assert_eq!(c.node, "ship1");
}

#[test]
fn help_shows_the_seed_names() {
    let err = Flags::from_args(&["steward"], &["--help"]).unwrap_err();
    let help = seed_help(&err.output);
    for name in [
        "--brokerAddress",
        "--centralErrorLogger",
        "--defaultMessageRetries",
        "--defaultMessageTimeout",
        "--profilingPort",
        "--promHostAndPort",
        "--node",
    ] {
        assert!(help.contains(name), "{name} missing from:\n{help}");
    }
    assert!(!help.contains("--broker-address"));
}

#[test]
fn the_largest_file_copied_comes_from_a_flag_the_environment_or_the_file() {
    let c = load(&["--node=x"], &[]).unwrap();
    assert_eq!(c.max_copy_bytes, 256 * 1024 * 1024);
    let c = load(&["--node=x", "--maxCopyBytes=1048576"], &[]).unwrap();
    assert_eq!(c.max_copy_bytes, 1 << 20);
    let c = load(&["--node=x"], &[("STEWARD_MAX_COPY_BYTES", "4096")]).unwrap();
    assert_eq!(c.max_copy_bytes, 4096);
    let (_dir, path) = config_file("maxCopyBytes = 8192\n");
    assert_eq!(
        load(&["--node=x", "--config", &path], &[])
            .unwrap()
            .max_copy_bytes,
        8192
    );
    let err = load(&["--node=x", "--maxCopyBytes=lots"], &[])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("maxCopyBytes") && err.contains("lots"),
        "{err}"
    );
}

#[test]
fn go_s_help_flags_ask_for_help_and_a_command_s_own_are_left_to_it() {
    for h in ["-h", "-help", "--help"] {
        assert_eq!(normalize_args(&args(&[h])).unwrap(), ["--help"]);
        let said = Flags::from_args(&["steward"], &["--help"]).unwrap_err();
        assert!(said.status.is_ok() && seed_help(&said.output).contains("--brokerAddress"));
    }
    assert_eq!(
        normalize_args(&args(&["send", "--to", "ship1", "--", "df", "-h"])).unwrap(),
        ["send", "--to", "ship1", "--", "df", "-h"]
    );
}

#[test]
fn a_secret_s_variable_wins_over_the_config_file_s_file_and_a_flag_over_both() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("token");
    std::fs::write(&file, "from-file\n").unwrap();
    let file = file.to_str().unwrap();
    let (_d, path) = config_file(&format!("node = \"a\"\ntokenFile = \"{file}\"\n"));
    let token = |c: &Config| match &c.security.auth {
        Auth::Token(t) => t.expose().to_string(),
        other => panic!("{other:?}"),
    };
    let c = load(&["--config", &path], &[]).unwrap();
    assert_eq!(token(&c), "from-file");
    let c = load(&["--config", &path], &[("STEWARD_TOKEN", "from-var")]).unwrap();
    assert_eq!(token(&c), "from-var", "the variable wins over the file");
    let flag = format!("--tokenFile={file}");
    let c = load(
        &["--config", &path, &flag],
        &[("STEWARD_TOKEN", "from-var")],
    )
    .unwrap();
    assert_eq!(token(&c), "from-file", "a flag wins over the variable");
    let c = load(
        &["--config", &path],
        &[("STEWARD_TOKEN", "from-var"), ("STEWARD_TOKEN_FILE", file)],
    )
    .unwrap();
    assert_eq!(token(&c), "from-file", "and so does the option's variable");
}

#[test]
fn too_many_handlers_is_an_error_naming_the_flag_not_an_abort() {
    // A permit for each handler is made at start: 10^11 asked for 800 GB at once, and
    // the agent aborted ("memory allocation failed") at every start, naming nothing.
    let e = parse(&["--node", "a", "--maxConcurrentHandlers=100000000000"]).unwrap_err();
    let said = e.to_string();
    assert!(said.contains("--maxConcurrentHandlers"), "{said}");
    assert!(said.contains("65536"), "{said}");
    assert_eq!(
        parse(&["--node", "a", "--maxConcurrentHandlers=65536"])
            .unwrap()
            .max_handlers,
        65_536
    );
}

/// A config file that is no regular file (a FIFO nobody writes to, a device) is an error
/// naming it, at once: the agent, and `steward status`, which read it too, waited for ever
/// on a FIFO and read /dev/zero until memory ran out.
#[test]
fn a_config_file_that_is_a_fifo_or_a_device_is_an_error_not_a_hang() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("steward.toml");
    assert!(std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    for path in [fifo.to_str().unwrap().to_string(), "/dev/zero".to_string()] {
        let (tx, rx) = std::sync::mpsc::channel();
        let arg = format!("--config={path}");
        std::thread::spawn(move || {
            let _ = tx.send(
                load(&["--node=x", &arg], &[])
                    .map(|_| ())
                    .map_err(|e| e.to_string()),
            );
        });
        let e = rx
            .recv_timeout(std::time::Duration::from_secs(5))
            .unwrap_or_else(|_| panic!("reading {path} as the config file still waits"))
            .unwrap_err();
        assert!(e.contains(&path) && e.contains("not a regular file"), "{e}");
    }
}

/// Credentials written into the broker's address are what the NATS client sends: given with
/// another way (`--tokenFile`, `--user`), that one would be silently unused.
#[test]
fn credentials_in_the_broker_address_and_another_way_is_an_error() {
    let (_dir, token) = config_file("t0ken\n");
    let e = load(
        &[
            "--node=x",
            "--brokerAddress=nats://steward:s3cret@10.0.0.1:4222",
            &format!("--tokenFile={token}"),
        ],
        &[],
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("token and credentials in brokerAddress"), "{e}");
    assert!(!e.contains("s3cret"), "{e}");
    let alone = load(
        &[
            "--node=x",
            "--brokerAddress=nats://steward:s3cret@10.0.0.1:4222",
        ],
        &[],
    );
    assert!(alone.is_ok());
}

/// A negative number of publishers is an error naming the flag: it was read as an `i32`
/// and cast, so -1 meant 18446744073709551615 publishers (no cap on threads at all), and a
/// count past 2147483647 was "not a whole number".
#[test]
fn a_negative_publisher_count_is_an_error_not_no_limit() {
    assert!(matches!(
        parse(&["--node=a", "--maxPublishers=-1"]),
        Err(Error::Value { at, problem: Problem::Number(text) })
            if at == "--maxPublishers" && text == "-1"
    ));
    let c = parse(&["--node=a", "--maxPublishers=3000000000"]).unwrap();
    assert_eq!(c.max_publishers, 3_000_000_000);
}

#[test]
fn one_of_steward_s_own_flags_after_the_subcommand_is_told_where_it_goes() {
    let hint = misplaced_flag("Unrecognized argument: --data-folder").unwrap();
    assert!(
        hint.contains("--dataFolder=… status") && hint.contains("before the subcommand"),
        "{hint}"
    );
    let hint = misplaced_flag("Unrecognized argument: --version").unwrap();
    assert!(hint.contains("(steward --version status"), "{hint}");
    assert!(misplaced_flag("Unrecognized argument: --dataFolder").is_some());
    // Not one of steward's: argh's word alone.
    assert_eq!(misplaced_flag("Unrecognized argument: --bogus"), None);
    assert_eq!(
        misplaced_flag("Required options not provided:\n    --to"),
        None
    );
}
