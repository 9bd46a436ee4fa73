#!/usr/bin/env python3
"""One line per result file of a bench/run.sh directory, plus the per-hibernated-room figure."""
import glob
import json
import sys

out = sys.argv[1]
by_name = {}
for path in sorted(glob.glob(f"{out}/*.json")):
    name = path.split("/")[-1][:-5]
    report = json.load(open(path))
    kind, x = report["scenario"], report["result"]
    by_name[name] = x
    if kind in ("fanout", "rooms", "load"):
        c, l, e = x["cpu"], x["latency"], x["errors"]
        print(f"{name:16} {x['rooms']}x{x['clients_per_room']} {x['mode']:22} "
              f"accepted/s={x['accepted_per_sec']:.0f} deliveries/s={x['deliveries_per_sec']:.0f} "
              f"p50={l['p50_ms']:.1f} p90={l['p90_ms']:.1f} p99={l['p99_ms']:.1f} max={l['max_ms']:.1f} ms "
              f"errors(connect/frames/closed)={e['connect']}/{e['error_frames']}/{e['closed_early']} "
              f"server_cores={c['server_cores']:.2f} server_runqueue_wait={c['server_runqueue_wait_secs']:.1f}s "
              f"generator_cores={c['generator_cores']:.2f} "
              f"deliveries/server-cpu-s={c['deliveries_per_server_cpu_sec']:.0f} "
              f"accepted/server-cpu-s={c['accepted_per_server_cpu_sec']:.0f}")
    elif kind == "join-storm":
        l = x["connect_to_ready"]
        print(f"{name:16} joins/s={x['joins_per_sec']:.0f} replayed={x['replayed_messages']} "
              f"short_replays={x['short_replays']} connect-to-ready p50={l['p50_ms']:.1f} "
              f"p99={l['p99_ms']:.1f} max={l['max_ms']:.1f} ms errors={x['errors']['connect_or_join']}")
    elif kind == "idle":
        r = x["server_rss_kib"]
        print(f"{name:16} connections={x['connections']} rooms={x['rooms']} server RSS KiB "
              f"before/resident/hibernated={r['before']}/{r['resident']}/{r['hibernated']} "
              f"bytes/connection={x['bytes_per_connection_hibernated']:.0f} errors={x['errors']}")
# Per hibernated room: the same connections in many rooms minus in few rooms.
for name, many in by_name.items():
    if not name.startswith("idle-rooms-"):
        continue
    few = by_name.get(name.replace("idle-rooms-", "idle-conns-"))
    if few and many["rooms"] != few["rooms"] and many["connections"] == few["connections"]:
        extra = (many["server_rss_kib"]["hibernated"] - few["server_rss_kib"]["hibernated"]) * 1024
        print(f"{name:16} per hibernated room: {extra / (many['rooms'] - few['rooms']):.0f} bytes "
              f"({many['rooms']} vs {few['rooms']} rooms, {many['connections']} connections each)")
