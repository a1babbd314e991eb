//! Every JSON example of the seed README, pasted verbatim into inmsg.txt.

use crate::common;
use common::{NatsServer, Node};

#[test]
fn a_command_from_one_node_to_another() {
    let nats = NatsServer::start();
    let _ship1 = Node::start("ship1", &nats.address(), &[]);
    let central = Node::start("central", &nats.address(), &[]);
    central.append_inmsg(
        r#"[
    {
        
        "toNode": "ship1",
        "data": ["bash","-c","ls -l ../"],
        "commandOrEvent":"CommandACK",
        "method":"CLICommand"
            
    }
]"#,
    );
    let reply = central.wait_for("replies/ship1.CLICommand.log", "exit=0");
    // `ls -l ../` run in ship1's data folder lists the temp folder holding it.
    assert!(reply.contains("total "), "{reply}");
    assert!(reply.contains("from=ship1 status=Ok"), "{reply}");
    central.wait_until("inmsg.txt", "emptied", |t| t.is_empty());
}

#[test]
fn several_messages_at_once() {
    let nats = NatsServer::start();
    let _ship1 = Node::start("ship1", &nats.address(), &[]);
    let _ship2 = Node::start("ship2", &nats.address(), &[]);
    let central = Node::start("central", &nats.address(), &[]);
    central.append_inmsg(
        r#"[
    {
        
        "toNode": "ship1",
        "data": ["bash","-c","ls -l ../"],
        "commandOrEvent":"CommandACK",
        "method":"CLICommand"
            
    },
    {
        
        "toNode": "ship2",
        "data": ["bash","-c","ls -l ../"],
        "commandOrEvent":"CommandACK",
        "method":"CLICommand"
            
    }
]"#,
    );
    central.wait_for(
        "replies/ship1.CLICommand.log",
        "from=ship1 status=Ok exit=0",
    );
    central.wait_for(
        "replies/ship2.CLICommand.log",
        "from=ship2 status=Ok exit=0",
    );
}

#[test]
fn custom_timeout_and_retries() {
    let nats = NatsServer::start();
    let _ship1 = Node::start("ship1", &nats.address(), &[]);
    let central = Node::start("central", &nats.address(), &[]);
    central.append_inmsg(
        r#"[
    {
        
        "toNode": "ship1",
        "data": ["bash","-c","netstat -an|grep -i listen"],
        "commandOrEvent":"CommandACK",
        "method":"CLICommand",
        "timeout":3,
        "retries":3
    }
]"#,
    );
    // netstat may not be installed; either way the command ran and its status came back.
    let reply = central.wait_for("replies/ship1.CLICommand.log", "from=ship1 status=Ok exit=");
    let log = central.wait_for("message-log.txt", "\"outcome\":\"acked\"");
    assert!(
        log.contains("\"timeout\":3") && log.contains("\"retries\":3"),
        "{log}"
    );
    assert!(log.contains("\"outcome\":\"acked\""), "{log}");
    assert!(!reply.is_empty());
}

#[test]
fn an_event_from_a_ship_to_central() {
    let nats = NatsServer::start();
    let central = Node::start("central", &nats.address(), &[]);
    let ship1 = Node::start("ship1", &nats.address(), &[]);
    // `cat myfile.json >> inmsg.txt`
    let myfile = ship1.path("myfile.json");
    std::fs::write(
        &myfile,
        r#"[
    {
        "toNode": "central",
        "data": ["some message sent from a ship for testing\n"],
        "commandOrEvent":"EventACK",
        "method":"TextLogging"
    }
]"#,
    )
    .unwrap();
    let status = std::process::Command::new("sh")
        .arg("-c")
        .arg("cat myfile.json >> inmsg.txt")
        .current_dir(ship1.data())
        .status()
        .unwrap();
    assert!(status.success());
    let logged = central.wait_for(
        "textlog/ship1.log",
        "some message sent from a ship for testing\n",
    );
    assert_eq!(logged, "some message sent from a ship for testing\n");
    ship1.wait_for("replies/central.TextLogging.log", "status=Ok");
}

#[test]
fn the_seed_invocations_and_help_work() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_steward"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--node",
        "--brokerAddress",
        "--centralErrorLogger",
        "--defaultMessageRetries",
        "--defaultMessageTimeout",
        "--profilingPort",
        "--promHostAndPort",
        "--dataFolder",
    ] {
        assert!(help.contains(flag), "--help lacks {flag}:\n{help}");
    }
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_steward"))
        .args(["--node=ship 1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--node") && err.contains("space"), "{err}");
}

#[test]
fn a_seed_example_with_a_value_of_the_wrong_type_names_its_key() {
    let nats = NatsServer::start();
    let central = Node::start("central", &nats.address(), &[]);
    // The seed's examples with the slips an operator makes editing them: the command as one
    // string, a node list in `toNode`, a timeout in quotes or with a fraction.
    central.append_inmsg(
        r#"[
    {
        "toNode": "ship1",
        "data": "ls -l ../",
        "commandOrEvent":"CommandACK",
        "method":"CLICommand"
    },
    {
        "toNode": ["ship1","ship2"],
        "data": ["bash","-c","ls -l ../"],
        "commandOrEvent":"CommandACK",
        "method":"CLICommand"
    },
    {
        "toNode": "ship1",
        "data": ["bash","-c","netstat -an|grep -i listen"],
        "commandOrEvent":"CommandACK",
        "method":"CLICommand",
        "timeout":"3",
        "retries":3
    },
    {
        "toNode": "ship1",
        "data": ["bash","-c","netstat -an|grep -i listen"],
        "commandOrEvent":"CommandACK",
        "method":"CLICommand",
        "timeout":3,
        "retries":1.5
    }
]"#,
    );
    let rejected = central.wait_count("inmsg.rejected.txt", "rejected:", 4);
    for why in [
        "message 1: bad data: invalid type: string \"ls -l ../\"",
        "message 2: bad toNode: invalid type: sequence",
        "message 3: bad timeout: invalid type: string \"3\"",
        "message 4: bad retries: invalid type: floating point `1.5`",
    ] {
        assert!(rejected.contains(why), "{why} missing:\n{rejected}");
    }
}

#[test]
fn go_style_boolean_values_turn_the_central_error_logger_on_and_off() {
    // The seed's flags are Go's `flag` package's, which takes strconv.ParseBool's words.
    let data = tempfile::tempdir().unwrap();
    let folder = format!("--dataFolder={}", data.path().display());
    for value in [
        "1", "t", "T", "TRUE", "True", "0", "f", "F", "FALSE", "False",
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_steward"))
            .args([&format!("-centralErrorLogger={value}"), &folder, "status"])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        // No agent runs on the folder: `status` says so (3), after the flags were taken.
        assert_eq!(
            out.status.code(),
            Some(3),
            "-centralErrorLogger={value}: {err}"
        );
    }
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_steward"))
        .args(["-centralErrorLogger=yes", &folder, "status"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--centralErrorLogger"), "{err}");
}
