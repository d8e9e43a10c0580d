//! `route-guide-server` as production runs it (TLS, issuer, audience, JWKS),
//! called by the route guide tutorial's Python client, by grpcurl through
//! reflection, and stopped under an open chat. What the client prints is
//! checked against the map (`data/route_guide_db.json`, read here on its
//! own) and the notes it sends.

use grpc_platform::test_support::{Python, RunningServer, ServerUnderTest, run};
use route_guide::pb::Point;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const WORKSPACE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
const HERE: &str = env!("CARGO_MANIFEST_DIR");

/// The server with production settings; reflection, off in production,
/// turned on when `reflection`.
fn start(reflection: bool) -> RunningServer {
    let extra: &[(&str, &str)] = if reflection {
        &[("SERVER__REFLECTION", "true")]
    } else {
        &[]
    };
    RunningServer::start_with(
        ServerUnderTest {
            binary: env!("CARGO_BIN_EXE_route-guide-server").as_ref(),
            env_prefix: "ROUTE_GUIDE",
            config_dir: &Path::new(HERE).join("config"),
            name: "route_guide",
        },
        extra,
    )
}

/// The map's places, in the file's order: where, and the name ("" for none).
fn places() -> Vec<(Point, String)> {
    let places: Vec<serde_json::Value> = serde_json::from_str(route_guide::FEATURES_JSON).unwrap();
    let e7 = |v: &serde_json::Value| i32::try_from(v.as_i64().unwrap()).unwrap();
    places
        .iter()
        .map(|p| {
            let at = &p["location"];
            let point = Point {
                latitude: e7(&at["latitude"]),
                longitude: e7(&at["longitude"]),
            };
            (point, p["name"].as_str().unwrap().to_owned())
        })
        .collect()
}

/// The point a client's line ends with (`… latitude: 1, longitude: -2`).
fn point_of(line: &str) -> Point {
    let (_, at) = line.rsplit_once("latitude: ").expect("a point");
    let (latitude, longitude) = at.trim().split_once(", longitude: ").expect("a point");
    Point {
        latitude: latitude.parse().unwrap(),
        longitude: longitude.parse().unwrap(),
    }
}

/// What the client printed under `-------------- {title} --------------`.
fn section<'a>(out: &'a str, title: &str) -> Vec<&'a str> {
    let header = format!("-------------- {title} --------------");
    let mut lines = out.lines().skip_while(|l| *l != header).skip(1);
    let section = lines
        .by_ref()
        .take_while(|l| !l.starts_with("---------"))
        .collect();
    assert!(out.contains(&header), "no {title} in {out}");
    section
}

/// The named features the client's lines list: (name, where).
fn listed(lines: &[&str]) -> Vec<(String, Point)> {
    lines
        .iter()
        .filter_map(|l| l.strip_prefix("Feature called "))
        .map(|l| {
            // Python's repr: the name between quotes.
            let (quoted, _) = l.rsplit_once(" at latitude: ").unwrap();
            (quoted[1..quoted.len() - 1].to_owned(), point_of(l))
        })
        .collect()
}

/// The replies the chat printed, in order. They are found wherever they
/// are: the client's sending thread prints too, and `print` writes a line
/// and its newline separately, so a line of one thread can end up at the
/// end of a line of the other.
fn replies(chat: &str) -> Vec<String> {
    chat.match_indices("Received message ")
        .map(|(i, _)| {
            let (head, tail) = chat[i..].split_once("longitude: ").expect("a point");
            let end = tail.find(|c: char| c != '-' && !c.is_ascii_digit());
            format!("{head}longitude: {}", &tail[..end.unwrap_or(tail.len())])
        })
        .collect()
}

fn after<'a>(lines: &[&'a str], prefix: &str) -> &'a str {
    let line = lines.iter().find_map(|l| l.strip_prefix(prefix));
    line.unwrap_or_else(|| panic!("no {prefix:?} in {lines:?}"))
        .trim()
}

#[tokio::test]
async fn the_tutorial_client_is_answered_with_the_scopes_and_refused_without() {
    let server = start(false);
    let python = Python::new(WORKSPACE.as_ref()).generate(
        &Path::new(HERE).join("proto"),
        &["routeguide/route_guide.proto"],
    );
    let client = |token: &str, call: Option<&str>| -> Command {
        let mut command = python.python();
        command
            .arg(Path::new(HERE).join("clients/route_guide_client.py"))
            .args(call)
            .env("ROUTE_GUIDE_TARGET", server.target())
            .env("ROUTE_GUIDE_CA", server.ca_file())
            .env("ROUTE_GUIDE_TOKEN", token);
        command
    };
    let places = places();
    let both = server.token("alice", "routes:read routes:write");
    let (out, _) = run(&mut client(&both, None), true);

    let get = section(&out, "GetFeature");
    let (lighthouse, name) = &places[0];
    assert_eq!(listed(&get), [(name.clone(), *lighthouse)], "{out}");
    assert_eq!(get[1], "Found no feature at latitude: 0, longitude: 0");

    // The client's rectangle, corners (44.12, -68.24) and (44.14, -68.20):
    // named places on its edges count, unnamed ones are never listed.
    let inside = |p: &Point| {
        (441_200_000..=441_400_000).contains(&p.latitude)
            && (-682_400_000..=-682_000_000).contains(&p.longitude)
    };
    let expected: Vec<(String, Point)> = places
        .iter()
        .filter(|(p, name)| inside(p) && !name.is_empty())
        .map(|(p, name)| (name.clone(), *p))
        .collect();
    assert_eq!(
        expected.len(),
        11,
        "the map puts 11 named places in the rectangle"
    );
    assert_eq!(listed(&section(&out, "ListFeatures")), expected, "{out}");

    // The route: every third place of the map.
    let record = section(&out, "RecordRoute");
    let visited: Vec<Point> = record
        .iter()
        .filter(|l| l.starts_with("Visiting point "))
        .map(|l| point_of(l))
        .collect();
    let route: Vec<&(Point, String)> = places.iter().step_by(3).collect();
    assert_eq!(visited, route.iter().map(|(p, _)| *p).collect::<Vec<_>>());
    let named = route.iter().filter(|(_, name)| !name.is_empty()).count();
    let metres: f64 = visited
        .windows(2)
        .map(|w| route_guide::distance(&w[0], &w[1]))
        .sum();
    assert_eq!(
        after(&record, "Finished trip with "),
        format!("{} points", visited.len())
    );
    assert_eq!(after(&record, "Passed "), format!("{named} features"));
    assert_eq!(
        after(&record, "Travelled "),
        format!("{} meters", metres as i32)
    );
    assert!(
        named > 0 && named < visited.len(),
        "the route passes places with and without names"
    );
    let seconds = after(&record, "It took ").trim_end_matches(" seconds");
    assert!(seconds.parse::<u32>().unwrap() < 30, "{seconds}");

    // Each note is answered with the notes sent to its location before it.
    let received = |out: &str| -> Vec<String> {
        let (_, chat) = out
            .split_once("-- RouteChat --")
            .expect("a RouteChat section");
        replies(chat)
    };
    let reply = |text: &str, at: &str| format!("Received message {text} message at latitude: {at}");
    let (origin, east, north) = ("0, longitude: 0", "0, longitude: 1", "1, longitude: 0");
    assert_eq!(
        received(&out),
        [reply("First", origin), reply("Third", north)]
    );
    // Notes are shared: the next caller is answered with the first's too.
    let (out, _) = run(
        &mut client(&server.token("bob", "routes:write"), Some("route_chat")),
        true,
    );
    let (first, second, third, fourth, fifth) = (
        reply("First", origin),
        reply("Second", east),
        reply("Third", north),
        reply("Fourth", origin),
        reply("Fifth", north),
    );
    let expected = [
        [first.clone(), fourth.clone()].as_slice(), // First (0, 0)
        &[second],                                  // Second (0, 1)
        &[third.clone(), fifth.clone()],            // Third (1, 0)
        &[first.clone(), fourth, first],            // Fourth (0, 0)
        &[third.clone(), fifth, third],             // Fifth (1, 0)
    ]
    .concat();
    assert_eq!(received(&out), expected);

    let (_, err) = run(&mut client("", None), false);
    assert!(err.contains("StatusCode.UNAUTHENTICATED"), "{err}");

    let reader = server.token("carol", "routes:read");
    for call in ["get_feature", "list_features"] {
        run(&mut client(&reader, Some(call)), true);
    }
    for call in ["record_route", "route_chat"] {
        let (_, err) = run(&mut client(&reader, Some(call)), false);
        assert!(
            err.contains("StatusCode.PERMISSION_DENIED"),
            "{call}: {err}"
        );
        assert!(
            err.contains("routes:write"),
            "the missing scope is named: {err}"
        );
    }

    assert_eq!(server.health("readiness").await.unwrap(), 1, "SERVING");
    assert_eq!(server.health("liveness").await.unwrap(), 1, "SERVING");
    assert!(server.stop().success(), "a clean stop on SIGTERM");
}

#[tokio::test]
async fn reflection_lists_and_describes_the_route_guide() {
    let server = start(true);
    let python = Python::new(WORKSPACE.as_ref());
    let grpcurl = |then: &[&str]| run(&mut server.grpcurl(&python, &[], then), true).0;
    let services = grpcurl(&["list"]);
    assert!(
        services.lines().any(|l| l == "routeguide.RouteGuide"),
        "{services}"
    );
    let described = grpcurl(&["describe", "routeguide.RouteGuide"]);
    for rpc in [
        "rpc GetFeature ( .routeguide.Point ) returns ( .routeguide.Feature )",
        "rpc ListFeatures ( .routeguide.Rectangle ) returns ( stream .routeguide.Feature )",
        "rpc RecordRoute ( stream .routeguide.Point ) returns ( .routeguide.RouteSummary )",
        "rpc RouteChat ( stream .routeguide.RouteNote ) returns ( stream .routeguide.RouteNote )",
    ] {
        assert!(described.contains(rpc), "{rpc} in {described}");
    }
    assert!(server.stop().success());
}

#[tokio::test]
async fn an_open_chat_ends_with_unavailable_when_the_server_stops() {
    let server = start(false);
    let python = Python::new(WORKSPACE.as_ref());
    let token = server.token("dave", "routes:write");
    // The proto from its files, not by reflection: grpcurl holds its
    // reflection stream open for as long as it runs.
    let protos = [
        Path::new(HERE).join("proto"),
        grpc_platform::PROTO_INCLUDE_DIR.into(),
    ];
    let import_paths: Vec<String> = protos
        .iter()
        .flat_map(|dir| ["-import-path".to_owned(), dir.display().to_string()])
        .collect();
    let mut flags: Vec<&str> = import_paths.iter().map(String::as_str).collect();
    let header = format!("authorization: Bearer {token}");
    flags.extend([
        "-proto",
        "routeguide/route_guide.proto",
        "-H",
        &header,
        "-d",
        "@",
    ]);
    let mut chat = server
        .grpcurl(&python, &flags, &["routeguide.RouteGuide/RouteChat"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("grpcurl runs");
    // Two notes at one place: the answer to the second shows the stream is
    // open; stdin stays open, so the client never ends it.
    let mut notes = chat.stdin.take().unwrap();
    let note = r#"{"location": {"latitude": 1, "longitude": 1}, "message": "still here"}"#;
    writeln!(notes, "{note}\n{note}").unwrap();
    let (lines, answered) = mpsc::channel();
    let stdout = chat.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = lines.send(line);
        }
    });
    while !answered
        .recv_timeout(Duration::from_secs(30))
        .expect("an answer within 30 s")
        .contains("still here")
    {}

    let (stopped, stop) = mpsc::channel();
    std::thread::spawn(move || stopped.send(server.stop()));
    let stop = stop.recv_timeout(Duration::from_secs(30));
    // grpcurl reports the status once its input ends (and, had the stream
    // held the stop up, the stream ends with it).
    drop(notes);
    let stop = stop.expect("an open stream does not hold the stop up");
    assert!(stop.success(), "a clean stop on SIGTERM");
    let out = chat.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("Code: Unavailable"), "{err}");
    assert!(err.contains("server shutting down"), "{err}");
}

/// The route guide answers a browser's protocols on the same port under the
/// same policy: GetFeature with Connect JSON, ListFeatures as a Connect
/// server stream (enveloped JSON messages, then the end of the stream), and
/// a token without the scope refused (HTTP 403).
#[tokio::test]
async fn curl_reaches_the_route_guide_with_connect_under_the_same_policy() {
    let server = start(false);
    let (point, name) = places()
        .into_iter()
        .find(|(_, name)| !name.is_empty())
        .expect("a named place");
    let at = format!(
        r#"{{"latitude":{},"longitude":{}}}"#,
        point.latitude, point.longitude
    );
    let reader = server.token("alice", "routes:read");
    let get_feature = |token: &str| {
        let (out, status, _) = server.curl(
            token,
            "--http2",
            "/routeguide.RouteGuide/GetFeature",
            "application/json",
            at.as_bytes(),
        );
        (String::from_utf8_lossy(&out).into_owned(), status)
    };

    let (out, status) = get_feature(&reader);
    assert_eq!(status, 200, "{out}");
    let feature: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(feature["name"], name.as_str(), "{out}");

    let (out, status) = get_feature(&server.token("alice", "routes:write"));
    assert_eq!(status, 403, "{out}");
    assert!(out.contains("permission_denied"), "{out}");

    // A rectangle around the one place: one feature, then the end.
    let rectangle = format!(r#"{{"lo":{at},"hi":{at}}}"#);
    let mut enveloped = vec![0u8];
    enveloped.extend_from_slice(&(rectangle.len() as u32).to_be_bytes());
    enveloped.extend_from_slice(rectangle.as_bytes());
    let (out, status, _) = server.curl(
        &reader,
        "--http1.1",
        "/routeguide.RouteGuide/ListFeatures",
        "application/connect+json",
        &enveloped,
    );
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&out));
    let mut messages = Vec::new();
    let mut rest = out.as_slice();
    while rest.len() >= 5 {
        let flags = rest[0];
        let len = u32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]) as usize;
        let json: serde_json::Value = serde_json::from_slice(&rest[5..5 + len]).unwrap();
        messages.push((flags, json));
        rest = &rest[5 + len..];
    }
    assert!(rest.is_empty(), "trailing bytes: {rest:?}");
    assert_eq!(messages.len(), 2, "{messages:?}");
    assert_eq!(messages[0].0, 0, "{messages:?}");
    assert_eq!(messages[0].1["name"], name.as_str(), "{messages:?}");
    // The end of the stream: flag 2, and no error in it.
    assert_eq!(messages[1].0, 2, "{messages:?}");
    assert!(messages[1].1.get("error").is_none(), "{messages:?}");
    assert!(server.stop().success(), "a clean stop on SIGTERM");
}
