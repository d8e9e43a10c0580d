//! gRPC's RouteGuide as a service of the platform's: its four kinds of RPC
//! over a map of named places (`data/route_guide_db.json`, compiled in).
//! What is the service's is here: the map, the handlers, the notes callers
//! leave for each other, and what the platform needs to know to run it
//! ([`RouteGuideServer`]). Who may call what is declared in
//! `proto/routeguide/route_guide.proto`: reading the map needs
//! `routes:read`; recording a route and chatting need `routes:write`.

use anyhow::Context;
use grpc_platform::config::{NoSections, Settings};
use grpc_platform::program::Service;
use grpc_platform::server::ServerBuilder;
use grpc_platform::streams::{Replies, StreamEnd, respond};
use serde::Deserialize;
use std::collections::{HashMap, VecDeque, hash_map::Entry};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;
use tokio::sync::watch;
use tonic::server::NamedService;
use tonic::{Code, Request, Response, Status, Streaming};
use tonic_types::{ErrorDetails, StatusExt};

pub mod pb {
    tonic::include_proto!("routeguide");
    /// Every message and method, with the access each method declares.
    pub const FILE_DESCRIPTOR_SET: &[u8] = grpc_platform::descriptor_set!();
}

use pb::route_guide_server::{RouteGuide, RouteGuideServer as RouteGuideService, SERVICE_NAME};
use pb::{Feature, Point, Rectangle, RouteNote, RouteSummary};

/// The map, in the tutorial's format: a JSON array of
/// `{"location": {"latitude", "longitude"}, "name"}`, E7 coordinates, an
/// empty name for a place without one. Compiled in: the binary needs no
/// file at run time.
pub const FEATURES_JSON: &str = include_str!("../data/route_guide_db.json");

/// A note's text is at most this many bytes (UTF-8).
pub const MAX_NOTE_BYTES: usize = 1024;
/// Notes kept per location: past this, the oldest is dropped.
pub const MAX_NOTES_PER_LOCATION: usize = 100;
/// Locations holding notes: a note for a new location past this is refused
/// with RESOURCE_EXHAUSTED. Any caller with `routes:write` can add notes, so
/// the three bounds together cap what they can make the server keep: about
/// 100 000 notes of at most 1 KiB, near 110 MiB at worst.
pub const MAX_LOCATIONS: usize = 1_000;

const E7: f64 = 1e7;
/// The Earth's mean radius, as the tutorial's `calc_distance` takes it.
const EARTH_RADIUS_M: f64 = 6_371_000.0;
const MAX_LATITUDE: i32 = 900_000_000;
const MAX_LONGITUDE: i32 = 1_800_000_000;

/// Adds the violations of `point`, its fields named after `prefix`.
fn check_point(point: &Point, prefix: &str, details: &mut ErrorDetails) {
    if !(-MAX_LATITUDE..=MAX_LATITUDE).contains(&point.latitude) {
        details.add_bad_request_violation(
            format!("{prefix}latitude"),
            "must be within ±90 degrees (±900000000 in E7)",
        );
    }
    if !(-MAX_LONGITUDE..=MAX_LONGITUDE).contains(&point.longitude) {
        details.add_bad_request_violation(
            format!("{prefix}longitude"),
            "must be within ±180 degrees (±1800000000 in E7)",
        );
    }
}

/// Adds the violations of the point in `field`, which must be set.
fn check_required(point: Option<&Point>, field: &str, details: &mut ErrorDetails) {
    match point {
        Some(point) => check_point(point, &format!("{field}."), details),
        None => {
            details.add_bad_request_violation(field, "is required");
        }
    }
}

/// INVALID_ARGUMENT with a BadRequest naming every field in `details`, or
/// `Ok` when it names none.
fn valid(details: ErrorDetails) -> Result<(), Status> {
    let message = match details.bad_request() {
        Some(bad) if !bad.field_violations.is_empty() => bad
            .field_violations
            .iter()
            .map(|v| format!("{} {}", v.field, v.description))
            .collect::<Vec<_>>()
            .join("; "),
        _ => return Ok(()),
    };
    Err(Status::with_error_details(
        Code::InvalidArgument,
        message,
        details,
    ))
}

fn key(point: &Point) -> (i32, i32) {
    (point.latitude, point.longitude)
}

/// The great-circle distance in metres between two points: the haversine
/// formula on a sphere of the Earth's mean radius, as the tutorial's
/// `calc_distance` computes it.
pub fn distance(from: &Point, to: &Point) -> f64 {
    let (lat1, lat2) = (from.latitude as f64 / E7, to.latitude as f64 / E7);
    let (lon1, lon2) = (from.longitude as f64 / E7, to.longitude as f64 / E7);
    let half_dlat = (lat2 - lat1).to_radians() / 2.0;
    let half_dlon = (lon2 - lon1).to_radians() / 2.0;
    let a = half_dlat.sin().powi(2)
        + lat1.to_radians().cos() * lat2.to_radians().cos() * half_dlon.sin().powi(2);
    // Rounding can take `a` a hair past 1 for antipodes: sqrt(1 - a) would be NaN.
    let a = a.clamp(0.0, 1.0);
    EARTH_RADIUS_M * 2.0 * a.sqrt().atan2((1.0 - a).sqrt())
}

/// Whether `point` is inside the rectangle whose opposite corners are `a`
/// and `b`, in any order; the edges are inside. The smaller longitude is
/// the west edge, so no rectangle crosses the antimeridian (as in the
/// tutorial).
pub fn in_rectangle(point: &Point, a: &Point, b: &Point) -> bool {
    let between = |v: i32, x: i32, y: i32| x.min(y) <= v && v <= x.max(y);
    between(point.latitude, a.latitude, b.latitude)
        && between(point.longitude, a.longitude, b.longitude)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Place {
    location: Location,
    name: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Location {
    latitude: i32,
    longitude: i32,
}

/// The map: the named features, and where each is.
#[derive(Debug)]
pub struct Features {
    /// In the file's order: the order ListFeatures streams them in.
    named: Vec<Feature>,
    /// Each named feature's index in `named`, by its point.
    by_point: HashMap<(i32, i32), usize>,
}

impl Features {
    /// Reads a features file. A point out of range, or two places at one
    /// point, is an error: the file is wrong, and a start with it fails.
    pub fn parse(json: &str) -> anyhow::Result<Self> {
        let places: Vec<Place> = serde_json::from_str(json)?;
        let mut seen = std::collections::HashSet::new();
        let mut features = Self {
            named: Vec::new(),
            by_point: HashMap::new(),
        };
        for (i, place) in places.into_iter().enumerate() {
            let location = Point {
                latitude: place.location.latitude,
                longitude: place.location.longitude,
            };
            let mut details = ErrorDetails::new();
            check_point(&location, "location.", &mut details);
            valid(details).map_err(|s| anyhow::anyhow!("place {i}: {}", s.message()))?;
            anyhow::ensure!(
                seen.insert(key(&location)),
                "place {i}: a second place at {location:?}"
            );
            if !place.name.is_empty() {
                features
                    .by_point
                    .insert(key(&location), features.named.len());
                features.named.push(Feature {
                    name: place.name,
                    location: Some(location),
                });
            }
        }
        Ok(features)
    }

    fn named_at(&self, point: &Point) -> Option<&Feature> {
        self.by_point.get(&key(point)).map(|&i| &self.named[i])
    }

    /// The named feature at `point`, or a feature with an empty name there.
    pub fn at(&self, point: Point) -> Feature {
        self.named_at(&point).cloned().unwrap_or(Feature {
            name: String::new(),
            location: Some(point),
        })
    }

    /// The named features inside the rectangle with corners `a` and `b`.
    pub fn inside(&self, a: &Point, b: &Point) -> Vec<Feature> {
        self.named
            .iter()
            .filter(|f| f.location.as_ref().is_some_and(|p| in_rectangle(p, a, b)))
            .cloned()
            .collect()
    }
}

/// What RecordRoute keeps of a route: counts, the distance so far and the
/// last point, so a route of any length costs the same memory.
#[derive(Debug, Default)]
struct Route {
    points: i32,
    features: i32,
    metres: f64,
    last: Option<Point>,
    started: Option<Instant>,
}

impl Route {
    fn visit(&mut self, point: Point, at: Instant, map: &Features) {
        self.points = self.points.saturating_add(1);
        if map.named_at(&point).is_some() {
            self.features = self.features.saturating_add(1);
        }
        if let Some(last) = &self.last {
            self.metres += distance(last, &point);
        }
        self.last = Some(point);
        self.started.get_or_insert(at);
    }

    /// The summary of a route that ended at `end`: whole metres and whole
    /// seconds (since the first point), rounded down.
    fn summary(&self, end: Instant) -> RouteSummary {
        let elapsed = self
            .started
            .map_or(0, |s| end.saturating_duration_since(s).as_secs());
        RouteSummary {
            point_count: self.points,
            feature_count: self.features,
            // `as` saturates: a route longer than i32::MAX metres says so.
            distance: self.metres as i32,
            elapsed_time: i32::try_from(elapsed).unwrap_or(i32::MAX),
        }
    }
}

/// The notes left at each location, shared by every caller, oldest first
/// (bounded: [`MAX_NOTES_PER_LOCATION`], [`MAX_LOCATIONS`], [`MAX_NOTE_BYTES`]).
#[derive(Debug, Default, Clone)]
pub struct Notes(Arc<Mutex<NotesByLocation>>);

/// Each location's notes (latitude and longitude in E7), oldest first.
type NotesByLocation = HashMap<(i32, i32), VecDeque<RouteNote>>;

impl Notes {
    /// Every note left at `note`'s location before it, oldest first; then
    /// `note` is kept. Both happen under one lock, so of two notes sent at
    /// once to one place exactly one sees the other.
    pub fn exchange(&self, note: RouteNote) -> Result<Vec<RouteNote>, Status> {
        let mut details = ErrorDetails::new();
        check_required(note.location.as_ref(), "location", &mut details);
        if note.message.len() > MAX_NOTE_BYTES {
            let problem = format!("must be at most {MAX_NOTE_BYTES} bytes");
            details.add_bad_request_violation("message", problem);
        }
        valid(details)?;
        let location = note.location.as_ref().map(key).unwrap_or_default(); // set: checked
        // Nothing below can panic, so a poisoned lock still holds whole notes.
        let mut notes = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let full = notes.len() >= MAX_LOCATIONS;
        let kept = match notes.entry(location) {
            Entry::Occupied(kept) => kept.into_mut(),
            Entry::Vacant(_) if full => {
                let problem =
                    format!("notes are kept at {MAX_LOCATIONS} locations at most; this one is new");
                return Err(Status::with_error_details(
                    Code::ResourceExhausted,
                    problem.clone(),
                    ErrorDetails::with_quota_failure_violation("locations", problem),
                ));
            }
            Entry::Vacant(new) => new.insert(VecDeque::new()),
        };
        let earlier = kept.iter().cloned().collect();
        if kept.len() >= MAX_NOTES_PER_LOCATION {
            kept.pop_front();
        }
        kept.push_back(note);
        Ok(earlier)
    }
}

/// The handlers: the map, the notes, and the signal that ends open streams.
#[derive(Debug, Clone)]
pub struct Guide {
    features: Arc<Features>,
    notes: Notes,
    stopping: watch::Receiver<bool>,
}

impl Guide {
    /// `stopping` turns true when the server has drained (`ServerBuilder::stopping`).
    pub fn new(features: Features, stopping: watch::Receiver<bool>) -> Self {
        Self {
            features: Arc::new(features),
            notes: Notes::default(),
            stopping,
        }
    }

    fn stream_end<T>(&self, request: &Request<T>) -> StreamEnd {
        StreamEnd::of(&self.stopping, request, SERVICE_NAME)
    }
}

#[tonic::async_trait]
impl RouteGuide for Guide {
    async fn get_feature(&self, request: Request<Point>) -> Result<Response<Feature>, Status> {
        let point = request.into_inner();
        let mut details = ErrorDetails::new();
        check_point(&point, "", &mut details);
        valid(details)?;
        Ok(Response::new(self.features.at(point)))
    }

    type ListFeaturesStream = Replies<Feature>;

    async fn list_features(
        &self,
        request: Request<Rectangle>,
    ) -> Result<Response<Self::ListFeaturesStream>, Status> {
        let end = self.stream_end(&request);
        let rectangle = request.into_inner();
        let mut details = ErrorDetails::new();
        check_required(rectangle.lo.as_ref(), "lo", &mut details);
        check_required(rectangle.hi.as_ref(), "hi", &mut details);
        valid(details)?;
        // Both set: checked above.
        let (lo, hi) = (
            rectangle.lo.unwrap_or_default(),
            rectangle.hi.unwrap_or_default(),
        );
        let found = self.features.inside(&lo, &hi);
        Ok(Response::new(respond(end, |tx| async move {
            for feature in found {
                if tx.send(Ok(feature)).await.is_err() {
                    break;
                }
            }
            Ok(())
        })))
    }

    async fn record_route(
        &self,
        request: Request<Streaming<Point>>,
    ) -> Result<Response<RouteSummary>, Status> {
        let mut end = self.stream_end(&request);
        let features = Arc::clone(&self.features);
        let mut points = request.into_inner();
        let record = async move {
            let mut route = Route::default();
            while let Some(point) = points.message().await? {
                let mut details = ErrorDetails::new();
                check_point(&point, "", &mut details);
                valid(details)?;
                route.visit(point, Instant::now(), &features);
            }
            Ok(route.summary(Instant::now()))
        };
        // A client may hold a route open for ever: it ends with the server.
        tokio::select! {
            biased;
            status = end.wait() => Err(status),
            summary = record => summary.map(Response::new),
        }
    }

    type RouteChatStream = Replies<RouteNote>;

    async fn route_chat(
        &self,
        request: Request<Streaming<RouteNote>>,
    ) -> Result<Response<Self::RouteChatStream>, Status> {
        let end = self.stream_end(&request);
        let notes = self.notes.clone();
        let mut inbound = request.into_inner();
        Ok(Response::new(respond(end, |tx| async move {
            while let Some(note) = inbound.message().await? {
                for earlier in notes.exchange(note)? {
                    if tx.send(Ok(earlier)).await.is_err() {
                        return Ok(());
                    }
                }
            }
            Ok(())
        })))
    }
}

/// The RouteGuide as a program: `route-guide-server`.
pub struct RouteGuideServer;

impl Service for RouteGuideServer {
    const PROGRAM: &'static str = "route-guide-server";
    const ABOUT: &'static str = "gRPC's RouteGuide, over TLS with tokens";
    const NAME: &'static str = "route_guide";
    const ENV_PREFIX: &'static str = "ROUTE_GUIDE";
    const DEV_SCOPE: &'static str = "routes:read routes:write";
    const SERVICES: &'static [(&'static str, &'static [u8])] = &[(
        <RouteGuideService<Guide> as NamedService>::NAME,
        pb::FILE_DESCRIPTOR_SET,
    )];
    type Sections = NoSections;

    async fn mount(
        settings: Settings<NoSections>,
        server: ServerBuilder,
    ) -> anyhow::Result<ServerBuilder> {
        let features = Features::parse(FEATURES_JSON).context("data/route_guide_db.json")?;
        let max = settings.server.max_message_bytes;
        let guide = RouteGuideService::new(Guide::new(features, server.stopping()))
            .max_decoding_message_size(max)
            .max_encoding_message_size(max);
        // The map is compiled in and the notes are in memory: readiness
        // follows start-up and draining.
        Ok(server.mount(guide, pb::FILE_DESCRIPTOR_SET)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn point(latitude: i32, longitude: i32) -> Point {
        Point {
            latitude,
            longitude,
        }
    }

    fn note(message: &str, location: Option<Point>) -> RouteNote {
        RouteNote {
            location,
            message: message.into(),
        }
    }

    fn map() -> Features {
        Features::parse(FEATURES_JSON).expect("the compiled-in features file parses")
    }

    /// The fields a status's BadRequest names.
    fn fields(status: &Status) -> Vec<String> {
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        let details = status.get_error_details();
        let bad = details.bad_request().expect("a BadRequest");
        bad.field_violations
            .iter()
            .map(|v| v.field.clone())
            .collect()
    }

    #[test]
    fn the_features_file_parses_with_named_and_unnamed_places() {
        let places: Vec<serde_json::Value> = serde_json::from_str(FEATURES_JSON).unwrap();
        let named = places.iter().filter(|p| p["name"] != "").count();
        assert!(
            named >= 20 && named < places.len(),
            "{named} of {}",
            places.len()
        );
        assert_eq!(map().named.len(), named);
    }

    #[test]
    fn a_malformed_features_file_is_refused() {
        for json in [
            "{",
            r#"[{"location": {"latitude": 1}, "name": "a"}]"#,
            r#"[{"location": {"latitude": 900000001, "longitude": 0}, "name": "a"}]"#,
            r#"[{"location": {"latitude": 1, "longitude": 2}, "name": "a"},
                {"location": {"latitude": 1, "longitude": 2}, "name": ""}]"#,
        ] {
            assert!(Features::parse(json).is_err(), "{json}");
        }
    }

    #[test]
    fn distance_is_the_haversine_great_circle_distance() {
        // One degree of a great circle: R·π/180.
        let degree = EARTH_RADIUS_M * std::f64::consts::PI / 180.0;
        assert!((distance(&point(0, 0), &point(10_000_000, 0)) - degree).abs() < 1e-6);
        assert!((distance(&point(0, 0), &point(0, -10_000_000)) - degree).abs() < 1e-6);
        // Along a parallel the degrees shrink with the cosine of the latitude.
        let at_60 = distance(&point(600_000_000, 0), &point(600_000_000, 10_000_000));
        assert!((at_60 - degree / 2.0).abs() < 1.0, "{at_60}");
        assert_eq!(distance(&point(12, 34), &point(12, 34)), 0.0);
        // Antipodes: half the circumference, not NaN.
        let half = distance(&point(0, 0), &point(0, 1_800_000_000));
        assert!(
            (half - EARTH_RADIUS_M * std::f64::consts::PI).abs() < 1e-3,
            "{half}"
        );
    }

    #[test]
    fn a_rectangle_holds_its_edges_whatever_the_order_of_its_corners() {
        let (a, b) = (point(10, -20), point(30, 40));
        for (x, y) in [(&a, &b), (&b, &a), (&point(10, 40), &point(30, -20))] {
            for inside in [point(10, -20), point(30, 40), point(20, 0), point(10, 40)] {
                assert!(in_rectangle(&inside, x, y), "{inside:?}");
            }
            for outside in [point(9, 0), point(31, 0), point(20, -21), point(20, 41)] {
                assert!(!in_rectangle(&outside, x, y), "{outside:?}");
            }
        }
    }

    #[test]
    fn a_route_counts_points_named_features_metres_and_seconds() {
        let map = map();
        let named = map.named[0].location.unwrap();
        let nowhere = point(0, 0);
        let start = Instant::now();
        let mut route = Route::default();
        for (i, p) in [named, nowhere, named].into_iter().enumerate() {
            route.visit(p, start + Duration::from_millis(1200 * i as u64), &map);
        }
        let summary = route.summary(start + Duration::from_millis(3900));
        assert_eq!((summary.point_count, summary.feature_count), (3, 2));
        assert_eq!(summary.distance, (2.0 * distance(&named, &nowhere)) as i32);
        assert_eq!(summary.elapsed_time, 3);
        assert_eq!(Route::default().summary(start), RouteSummary::default());
    }

    #[tokio::test]
    async fn get_feature_names_the_place_or_answers_an_empty_name() {
        let (_stop, stopping) = watch::channel(false);
        let guide = Guide::new(map(), stopping);
        let known = guide.features.named[0].clone();
        let get = |p: Point| guide.get_feature(Request::new(p));
        let found = get(known.location.unwrap()).await.unwrap().into_inner();
        assert_eq!(found, known);
        let nothing = get(point(1, 1)).await.unwrap().into_inner();
        assert_eq!(
            (nothing.name.as_str(), nothing.location),
            ("", Some(point(1, 1)))
        );
    }

    #[tokio::test]
    async fn points_out_of_range_and_missing_corners_are_invalid_naming_the_field() {
        let (_stop, stopping) = watch::channel(false);
        let guide = Guide::new(map(), stopping);
        let status = guide
            .get_feature(Request::new(point(900_000_001, -1_800_000_001)))
            .await;
        assert_eq!(fields(&status.unwrap_err()), ["latitude", "longitude"]);
        let rectangle = Rectangle {
            lo: None,
            hi: Some(point(0, 1_800_000_001)),
        };
        let status = guide
            .list_features(Request::new(rectangle))
            .await
            .err()
            .unwrap();
        assert_eq!(fields(&status), ["lo", "hi.longitude"]);
    }

    #[test]
    fn a_note_without_a_location_or_with_too_long_a_message_is_invalid() {
        let notes = Notes::default();
        let status = notes.exchange(note("hi", None)).unwrap_err();
        assert_eq!(fields(&status), ["location"]);
        let status = notes
            .exchange(note("hi", Some(point(-900_000_001, 0))))
            .unwrap_err();
        assert_eq!(fields(&status), ["location.latitude"]);
        let long = "x".repeat(MAX_NOTE_BYTES + 1);
        let status = notes.exchange(note(&long, Some(point(0, 0)))).unwrap_err();
        assert_eq!(fields(&status), ["message"]);
        assert!(
            notes.0.lock().unwrap().is_empty(),
            "nothing invalid is kept"
        );
    }

    #[test]
    fn a_note_is_answered_with_the_notes_left_earlier_at_its_location_by_anyone() {
        // Each call holds a clone of the service's notes.
        let alice = Notes::default();
        let bob = alice.clone();
        let (here, there) = (Some(point(1, 1)), Some(point(2, 2)));
        assert_eq!(alice.exchange(note("a1", here)).unwrap(), []);
        assert_eq!(bob.exchange(note("b1", there)).unwrap(), []);
        assert_eq!(bob.exchange(note("b2", here)).unwrap(), [note("a1", here)]);
        let earlier = alice.exchange(note("a2", here)).unwrap();
        assert_eq!(earlier, [note("a1", here), note("b2", here)]);
        assert_eq!(
            alice.exchange(note("a3", there)).unwrap(),
            [note("b1", there)]
        );
    }

    #[test]
    fn notes_are_bounded_per_location_and_in_locations() {
        let notes = Notes::default();
        let here = Some(point(0, 0));
        for i in 0..=MAX_NOTES_PER_LOCATION {
            notes.exchange(note(&i.to_string(), here)).unwrap();
        }
        let earlier = notes.exchange(note("last", here)).unwrap();
        assert_eq!(earlier.len(), MAX_NOTES_PER_LOCATION);
        assert_eq!(earlier[0].message, "1", "the oldest was dropped");
        for i in 1..MAX_LOCATIONS as i32 {
            notes.exchange(note("x", Some(point(i, 0)))).unwrap();
        }
        let refused = notes.exchange(note("x", Some(point(-1, 0)))).unwrap_err();
        assert_eq!(refused.code(), Code::ResourceExhausted);
        // A location that has notes still takes more.
        assert_eq!(
            notes.exchange(note("y", Some(point(1, 0)))).unwrap().len(),
            1
        );
    }
}
