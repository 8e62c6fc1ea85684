//! Simulated devices and the readings they send.

use std::f64::consts::PI;

use ed25519_dalek::SigningKey;
use hexpulse_common::registry::Device;
use hexpulse_schemas::sign;
use hexpulse_schemas::wire::{
    Heartbeat, Kind, KindName, Location, Measurement, Metric, ObservationType, PayloadFormat,
    RadioTech, Reading, Road, Sensor, SignedReading, SpeedTest,
};
use prost::Message;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

/// City centres the fleet clusters around: (name, lat, lng).
pub const CITIES: [(&str, f64, f64); 5] = [
    ("berlin", 52.5200, 13.4050),
    ("lisbon", 38.7223, -9.1393),
    ("austin", 30.2672, -97.7431),
    ("nairobi", -1.2921, 36.8219),
    ("seoul", 37.5665, 126.9780),
];

const EARTH_RADIUS_M: f64 = 6_371_008.8;

/// Share of each kind among the devices.
#[derive(Debug, Clone, Copy)]
pub struct KindMix {
    pub heartbeat: f64,
    pub sensor: f64,
    pub road: f64,
}

/// One simulated device.
#[derive(Debug, Clone)]
pub struct SimDevice {
    pub key: SigningKey,
    pub kind: KindName,
    /// Asserted (registered) location.
    pub home: (f64, f64),
    /// Current position (moves for dashcams).
    pub pos: (f64, f64),
    pub heading_deg: f64,
    pub speed_kmh: f64,
    /// Dashcams: the side of the square of streets they drive around (from `home`, the first
    /// side along `turn_deg`, turning left at each corner), and where on it they were at time 0.
    pub route_side_m: f64,
    pub route_phase_m: f64,
    pub turn_deg: f64,
    pub next_seq: u64,
    pub last_ms: i64,
    /// Pollution level of the site (sensors), 0.5..3.
    pub hotspot: f64,
    /// When the device starts sending (a pilot's new hotspots); `i64::MIN`: from the start.
    pub active_from_ms: i64,
}

impl SimDevice {
    /// A dashcam's position and heading at device time `t_ms`: at its speed around its square.
    pub fn route_at(&self, t_ms: i64) -> ((f64, f64), f64) {
        let side = self.route_side_m;
        let driven = self.speed_kmh / 3.6 * (t_ms as f64 / 1000.0) + self.route_phase_m;
        let along = driven.rem_euclid(4.0 * side);
        let leg = (along / side).floor().min(3.0);
        let mut corner = self.home;
        for k in 0..leg as u8 {
            corner = offset(
                corner.0,
                corner.1,
                side,
                self.turn_deg - 90.0 * f64::from(k),
            );
        }
        let heading = (self.turn_deg - 90.0 * leg).rem_euclid(360.0);
        (
            offset(corner.0, corner.1, along - leg * side, heading),
            heading,
        )
    }
}

/// A seeded fleet.
#[derive(Debug)]
pub struct Fleet {
    /// The devices: those sending from the start first, then the ones that start later (a pilot's
    /// new hotspots), by their start.
    pub devices: Vec<SimDevice>,
    /// `devices[..awake]` are sending ([`Fleet::wake`]).
    awake: usize,
    seed: u64,
    rng: SmallRng,
}

/// Moves `(lat, lng)` by `dist_m` along `bearing_deg` (spherical earth).
pub fn offset(lat: f64, lng: f64, dist_m: f64, bearing_deg: f64) -> (f64, f64) {
    let d = dist_m / EARTH_RADIUS_M;
    let (b, p1, l1) = (bearing_deg.to_radians(), lat.to_radians(), lng.to_radians());
    let p2 = (p1.sin() * d.cos() + p1.cos() * d.sin() * b.cos()).asin();
    let l2 = l1 + (b.sin() * d.sin() * p1.cos()).atan2(d.cos() - p1.sin() * p2.sin());
    (p2.to_degrees(), ((l2.to_degrees() + 540.0) % 360.0) - 180.0)
}

/// Great-circle distance in metres.
pub fn distance_m(a: (f64, f64), b: (f64, f64)) -> f64 {
    let (p1, p2) = (a.0.to_radians(), b.0.to_radians());
    let dp = p2 - p1;
    let dl = (b.1 - a.1).to_radians();
    let h = (dp / 2.0).sin().powi(2) + p1.cos() * p2.cos() * (dl / 2.0).sin().powi(2);
    2.0 * EARTH_RADIUS_M * h.sqrt().asin()
}

/// The key of device `index` in a fleet seeded with `seed`.
pub fn device_key(seed: u64, index: u64) -> SigningKey {
    let mut s = [0u8; 32];
    s[..8].copy_from_slice(&seed.to_le_bytes());
    s[8..16].copy_from_slice(&index.to_le_bytes());
    s[16..].copy_from_slice(b"hexpulse-sim-dev");
    sign::signing_key_from_seed(s)
}

impl Fleet {
    pub fn new(n: usize, seed: u64, mix: KindMix) -> Fleet {
        let mut rng = SmallRng::seed_from_u64(seed);
        let total = (mix.heartbeat + mix.sensor + mix.road).max(f64::MIN_POSITIVE);
        let devices = (0..n as u64)
            .map(|i| {
                let u: f64 = rng.random::<f64>() * total;
                let kind = if u < mix.heartbeat {
                    KindName::Heartbeat
                } else if u < mix.heartbeat + mix.sensor {
                    KindName::Sensor
                } else {
                    KindName::Road
                };
                // Density falls off from the centre: exponential distance, mean 4 km.
                let (_, clat, clng) = CITIES[rng.random_range(0..CITIES.len())];
                let dist = -4_000.0 * (1.0 - rng.random::<f64>()).ln();
                let home = offset(clat, clng, dist.min(40_000.0), rng.random_range(0.0..360.0));
                SimDevice {
                    key: device_key(seed, i),
                    kind,
                    home,
                    pos: home,
                    heading_deg: 0.0,
                    speed_kmh: rng.random_range(20.0..60.0),
                    // Roads run on a grid: dashcams drive north/east/south/west.
                    route_side_m: rng.random_range(2_000.0..8_000.0),
                    route_phase_m: rng.random_range(0.0..32_000.0),
                    turn_deg: 90.0 * f64::from(rng.random_range(0..4u8)),
                    next_seq: 1,
                    last_ms: 0,
                    hotspot: rng.random_range(0.5..3.0),
                    active_from_ms: i64::MIN,
                }
            })
            .collect::<Vec<_>>();
        Fleet {
            awake: devices.len(),
            devices,
            seed,
            rng,
        }
    }

    /// Adds `n` hotspots at sites spread uniformly over `area` (west, south, east, north) that stay
    /// silent until `active_from_ms`: a pilot's new hotspots. Their keys continue the fleet's
    /// indices, so the same seed gives the same devices.
    pub fn add_dormant_hotspots(&mut self, n: usize, area: [f64; 4], active_from_ms: i64) {
        let [west, south, east, north] = area;
        let first = self.devices.len() as u64;
        for i in 0..n as u64 {
            let home = (
                self.rng.random_range(south..north),
                self.rng.random_range(west..east),
            );
            self.devices.push(SimDevice {
                key: device_key(self.seed, first + i),
                kind: KindName::Heartbeat,
                home,
                pos: home,
                heading_deg: 0.0,
                speed_kmh: 0.0,
                route_side_m: 0.0,
                route_phase_m: 0.0,
                turn_deg: 0.0,
                next_seq: 1,
                last_ms: 0,
                hotspot: 1.0,
                active_from_ms,
            });
        }
        self.devices[self.awake..].sort_by_key(|d| d.active_from_ms);
    }

    /// Lets the devices whose start has come send from now on.
    pub fn wake(&mut self, now_ms: i64) {
        while self
            .devices
            .get(self.awake)
            .is_some_and(|d| d.active_from_ms <= now_ms)
        {
            self.awake += 1;
        }
    }

    /// The devices sending now (at the last [`Fleet::wake`]).
    pub fn awake(&self) -> usize {
        self.awake
    }

    /// The registry entries of every device.
    pub fn registry_devices(&self) -> Vec<Device> {
        self.devices
            .iter()
            .enumerate()
            .map(|(i, d)| Device {
                public_key: hex::encode(d.key.verifying_key().as_bytes()),
                kind: d.kind,
                lat: d.home.0,
                lng: d.home.1,
                owner: format!("owner-{}", i % 97),
            })
            .collect()
    }

    /// Picks a sending device uniformly at random.
    pub fn pick(&mut self) -> usize {
        self.rng.random_range(0..self.awake.max(1))
    }

    /// The next valid reading of device `idx` at `now_ms`, signed. Advances its sequence and position.
    pub fn next_signed(&mut self, idx: usize, now_ms: i64) -> SignedReading {
        let reading = self.next_reading(idx, now_ms);
        sign_reading(&self.devices[idx].key, &reading)
    }

    /// The next valid reading of device `idx` at `now_ms` (unsigned).
    pub fn next_reading(&mut self, idx: usize, now_ms: i64) -> Reading {
        let rng = &mut self.rng;
        let d = &mut self.devices[idx];
        // Device clocks never go backwards and sequence numbers always grow.
        let t = now_ms.max(d.last_ms + 1);
        d.last_ms = t;
        // A device's sequence numbers never repeat, across restarts too (WIRE.md): they are its
        // clock's milliseconds, which never go backwards and here grow with every reading, so a
        // simulator started again continues above what it sent before.
        let seq = (t.max(0) as u64).max(d.next_seq);
        d.next_seq = seq + 1;
        let hour = ((t / 3_600_000) % 24) as f64;
        let kind = match d.kind {
            KindName::Heartbeat => {
                // GPS jitter of a few metres around the installed site.
                d.pos = offset(
                    d.home.0,
                    d.home.1,
                    rng.random_range(0.0..15.0),
                    rng.random_range(0.0..360.0),
                );
                Kind::Heartbeat(Heartbeat {
                    radio: [RadioTech::Wifi, RadioTech::Lte, RadioTech::Nr5g][idx % 3] as i32,
                    signal_dbm: rng.random_range(-105.0..-45.0),
                    speed_test: rng.random_bool(0.2).then(|| SpeedTest {
                        download_mbps: rng.random_range(5.0..900.0),
                        upload_mbps: rng.random_range(1.0..200.0),
                        latency_ms: rng.random_range(5.0..120.0),
                    }),
                })
            }
            KindName::Sensor => {
                // Diurnal cycle peaking in the evening rush hour, scaled by the site's pollution.
                let diurnal = 1.0 + 0.5 * ((hour - 12.0) / 24.0 * 2.0 * PI).sin();
                let noise = |rng: &mut SmallRng| rng.random_range(0.9..1.1);
                let mut m = vec![
                    Measurement {
                        metric: Metric::Pm25 as i32,
                        value: 8.0 * d.hotspot * diurnal * noise(rng),
                    },
                    Measurement {
                        metric: Metric::Pm10 as i32,
                        value: 15.0 * d.hotspot * diurnal * noise(rng),
                    },
                    Measurement {
                        metric: Metric::NoiseDb as i32,
                        value: 45.0 + 10.0 * diurnal * noise(rng),
                    },
                ];
                if idx.is_multiple_of(2) {
                    m.push(Measurement {
                        metric: Metric::TemperatureC as i32,
                        value: 12.0 + 8.0 * diurnal,
                    });
                    m.push(Measurement {
                        metric: Metric::HumidityPct as i32,
                        value: 60.0 - 15.0 * (diurnal - 1.0),
                    });
                }
                Kind::Sensor(Sensor { measurements: m })
            }
            KindName::Road => {
                // Where the route puts it at this time: a function of the device's clock alone, so
                // that a simulator started again continues the drive instead of jumping back home
                // (which the processors would reject as `impossible_speed`).
                (d.pos, d.heading_deg) = d.route_at(t);
                Kind::Road(Road {
                    observation: [
                        ObservationType::Pothole,
                        ObservationType::Congestion,
                        ObservationType::Speed,
                        ObservationType::Sign,
                        ObservationType::Construction,
                    ][rng.random_range(0..5)] as i32,
                    heading_deg: d.heading_deg as f32,
                    speed_kmh: d.speed_kmh as f32,
                    confidence: rng.random_range(0.5..1.0),
                })
            }
        };
        Reading {
            schema_version: hexpulse_schemas::wire::SCHEMA_VERSION,
            device_time_ms: t,
            seq,
            location: Some(Location {
                lat: d.pos.0,
                lng: d.pos.1,
                accuracy_m: rng.random_range(2.0..12.0),
            }),
            kind: Some(kind),
        }
    }
}

/// Signs `reading` with `key` into a protobuf-format envelope.
pub fn sign_reading(key: &SigningKey, reading: &Reading) -> SignedReading {
    let payload = reading.encode_to_vec();
    SignedReading {
        public_key: key.verifying_key().to_bytes().to_vec().into(),
        signature: sign::sign(key, &payload).to_vec().into(),
        payload: payload.into(),
        format: PayloadFormat::Protobuf as i32,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fleet_is_deterministic_and_readings_verify() {
        let mix = KindMix {
            heartbeat: 0.5,
            sensor: 0.3,
            road: 0.2,
        };
        let mut a = Fleet::new(50, 7, mix);
        let b = Fleet::new(50, 7, mix);
        assert_eq!(a.registry_devices(), b.registry_devices());
        for i in 0..50 {
            let s = a.next_signed(i, 1_767_225_600_000);
            let checked = hexpulse_schemas::check::check_item(&s).expect("valid");
            assert_eq!(checked.kind, a.devices[i].kind);
            let loc = checked.reading.location.unwrap();
            let city_near = CITIES
                .iter()
                .any(|(_, lat, lng)| distance_m((loc.lat, loc.lng), (*lat, *lng)) < 100_000.0);
            assert!(city_near, "device {i} at {loc:?} is near a city");
        }
    }

    #[test]
    fn dashcams_move_at_their_speed() {
        let mut f = Fleet::new(
            200,
            3,
            KindMix {
                heartbeat: 0.0,
                sensor: 0.0,
                road: 1.0,
            },
        );
        let r1 = f.next_reading(0, 1_000_000);
        let r2 = f.next_reading(0, 1_010_000);
        let (l1, l2) = (r1.location.unwrap(), r2.location.unwrap());
        let v_kmh = distance_m((l1.lat, l1.lng), (l2.lat, l2.lng)) / 10.0 * 3.6;
        assert!(
            (v_kmh - f.devices[0].speed_kmh).abs() < 1.0,
            "{v_kmh} vs {}",
            f.devices[0].speed_kmh
        );
        assert!(r2.seq > r1.seq);
    }

    #[test]
    fn a_restarted_dashcam_goes_on_from_where_it_was() {
        let mix = KindMix {
            heartbeat: 0.0,
            sensor: 0.0,
            road: 1.0,
        };
        let t0 = 1_767_225_600_000;
        let mut before = Fleet::new(50, 9, mix);
        let mut after = Fleet::new(50, 9, mix);
        for i in 0..50 {
            let mut last = None;
            for k in 0..60 {
                last = before.next_reading(i, t0 + k * 1_000).location;
            }
            // Started again 20 s later, as `make up` after Ctrl-C.
            let first = after.next_reading(i, t0 + 80_000).location.unwrap();
            let last = last.unwrap();
            let d = distance_m((last.lat, last.lng), (first.lat, first.lng));
            let v_kmh = d / 21.0 * 3.6;
            assert!(
                v_kmh <= after.devices[i].speed_kmh + 0.5,
                "dashcam {i} jumped {d:.0} m ({v_kmh:.0} km/h)"
            );
            // It stays within its square of streets around its registered place.
            let home = after.devices[i].home;
            assert!(distance_m(home, (first.lat, first.lng)) < 1.5 * 8_000.0);
        }
    }

    #[test]
    fn a_restarted_fleet_never_repeats_a_sequence_number() {
        let mix = KindMix {
            heartbeat: 1.0,
            sensor: 0.0,
            road: 0.0,
        };
        let mut before = Fleet::new(10, 5, mix);
        let t0 = 1_767_225_600_000;
        let mut last = 0;
        for k in 0..100 {
            last = last.max(before.next_reading(3, t0 + k).seq);
        }
        // The same devices (same seed) started again a second later, as `make up` after Ctrl-C.
        let mut after = Fleet::new(10, 5, mix);
        let first = after.next_reading(3, t0 + 1_000).seq;
        assert!(first > last, "{first} after {last}");
    }
}
