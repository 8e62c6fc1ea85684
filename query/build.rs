//! Embeds the map page's vendor bundle (MapLibre GL JS and the basemap's data, copied from npm by
//! `scripts/assets.sh`, which `make up` and `make test` run first) when it is there. Without it the binary still builds;
//! the page then explains how to build the bundle.

fn main() {
    println!("cargo::rustc-check-cfg=cfg(hexpulse_map_bundle)");
    let vendor = std::path::Path::new("assets/vendor");
    println!("cargo::rerun-if-changed=assets/vendor");
    let needed = [
        "maplibre-gl.mjs",
        "maplibre-gl-worker.mjs",
        "maplibre-gl-shared.mjs",
        "maplibre-gl.css",
        "countries-10m.json",
        "topojson-client.min.js",
        "places.json",
        "uPlot.esm.js",
        "uPlot.min.css",
    ];
    for f in needed {
        println!("cargo::rerun-if-changed=assets/vendor/{f}");
    }
    if needed.iter().all(|f| vendor.join(f).exists()) {
        println!("cargo::rustc-cfg=hexpulse_map_bundle");
    }
}
