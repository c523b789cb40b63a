import json, sys, glob, os, re
d = sys.argv[1]
for f in sorted(glob.glob(d + "/r*.json")):
    txt = open(f).read(); i = txt.find("\n{\n") + 1
    try:
        j = json.loads(txt[i:txt.rindex("written to")])
    except Exception as e:
        print(os.path.basename(f), "incomplete"); continue
    s, t, l, c = j["signed"], j["tradingview"], j["latency"], j["config"]
    print(f"{os.path.basename(f):14} load {c['loadavg_1m_before']:5}->{c['loadavg_1m_after']:5} | signed {s['accepted_per_second']:7}/s cpu {s['server_cpu_ms_per_webhook']:.3f} p50 {s['ack_ms']['p50']} | tv {t['accepted_per_second']:7}/s cpu {t['server_cpu_ms_per_webhook']:.3f} | lat {l['rate']}/s p50 {l['webhook_to_subscriber_ms']['p50']} p99 {l['webhook_to_subscriber_ms']['p99']} | dup {j['duplicate_publications']} db {j['alerts_in_database']} deliv {s['delivered']}+{t['delivered']}+{l['delivered']}")
