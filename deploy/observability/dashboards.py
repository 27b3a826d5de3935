#!/usr/bin/env python3
"""Writes Tern's Grafana dashboards (dashboards/*.json) from one panel list.

Run it after changing a panel: python3 deploy/observability/dashboards.py
Every expression uses only metrics the services export (see each service's
README); `max by` for gauges every queue replica reports alike, `sum by` for
counters each replica counts for itself.
"""
import json
import os

RATE = "[$__rate_interval]"


def p99(metric, by=""):
    by = f", {by}" if by else ""
    return f"histogram_quantile(0.99, sum by (le{by}) (rate({metric}_bucket{RATE})))"


DASHBOARDS = {
    "tern-mail-flow": ("Tern / Mail flow", [
        ("Messages accepted /s", "sum(rate(tern_queue_messages_received_total" + RATE + "))", "ops"),
        ("SMTP replies by code /s", "sum by (code) (rate(tern_smtp_replies_total" + RATE + "))", "ops"),
        ("Recipient outcomes /s", "sum by (outcome) (rate(tern_queue_results_total" + RATE + "))", "ops"),
        ("Spool publish latency p99", p99("tern_spool_publish_seconds"), "s"),
        ("Open SMTP connections", "sum(tern_smtp_connections_active)", "short"),
        ("DSNs sent /s", "sum by (kind) (rate(tern_queue_dsns_total" + RATE + "))", "ops"),
    ]),
    "tern-queues": ("Tern / Queues by destination", [
        ("Ready jobs by destination", 'max by (destination) (tern_queue_jobs{state="ready"})', "short"),
        ("Scheduled (waiting to retry) by destination", 'max by (destination) (tern_queue_jobs{state="scheduled"})', "short"),
        ("Held jobs by destination", 'max by (destination) (tern_queue_jobs{state="held"})', "short"),
        ("Oldest waiting job by destination", "max by (destination) (tern_queue_oldest_age_seconds)", "s"),
        ("Jobs in flight", "max(tern_queue_in_flight)", "short"),
        ("JetStream consumer lag", "max by (consumer) (tern_jetstream_consumer_pending)", "short"),
    ]),
    "tern-delivery": ("Tern / Delivery", [
        ("Attempts by outcome /s", "sum by (outcome) (rate(tern_delivery_attempts_total" + RATE + "))", "ops"),
        ("Deferred share", 'sum(rate(tern_delivery_attempts_total{outcome="deferred"}' + RATE + ")) / sum(rate(tern_delivery_attempts_total" + RATE + "))", "percentunit"),
        ("New SMTP connections /s", "sum(rate(tern_delivery_connections_total" + RATE + "))", "ops"),
        ("Idle pooled connections", "sum(tern_delivery_idle_connections)", "short"),
        ("Jobs waiting for a worker (autoscaling signal)", "max(tern_jetstream_consumer_pending{consumer=\"delivery\"})", "short"),
        ("Attempts deferred by destination limits /s", "sum(rate(tern_delivery_limit_deferrals_total" + RATE + "))", "ops"),
    ]),
    "tern-dns": ("Tern / DNS", [
        ("Lookups by type and outcome /s", "sum by (type, outcome) (rate(tern_dns_lookups_total" + RATE + "))", "ops"),
        ("Cache hit ratio", "sum(rate(tern_dns_cache_hits_total" + RATE + ")) / (sum(rate(tern_dns_cache_hits_total" + RATE + ")) + sum(rate(tern_dns_cache_misses_total" + RATE + ")))", "percentunit"),
        ("Coalesced and stale answers /s", "sum(rate(tern_dns_coalesced_total" + RATE + ")) or sum(rate(tern_dns_stale_served_total" + RATE + "))", "ops"),
        ("Upstream latency p99", p99("tern_dns_upstream_seconds"), "s"),
        ("Upstream queries waiting", "sum(tern_dns_upstream_queued)", "short"),
    ]),
    "tern-campaigns": ("Campaigns", [
        ("Accepted by campaign /s", 'sum by (tenant, campaign) (rate(tern_campaign_events_total{kind="received"}' + RATE + "))", "ops"),
        ("Delivered by campaign /s", 'sum by (tenant, campaign) (rate(tern_campaign_events_total{kind="delivered"}' + RATE + "))", "ops"),
        ("Bounce share by campaign", 'sum by (tenant, campaign) (rate(tern_campaign_events_total{kind="bounced"}' + RATE + ')) / sum by (tenant, campaign) (rate(tern_campaign_events_total{kind=~"delivered|bounced"}' + RATE + "))", "percentunit"),
        ("Bounces by class /s", "sum by (tenant, class) (rate(tern_campaign_bounces_total" + RATE + "))", "ops"),
        ("Deferrals by campaign /s", 'sum by (tenant, campaign) (rate(tern_campaign_events_total{kind="deferred"}' + RATE + "))", "ops"),
        ("Complaints, unsubscriptions and suppressions /s", 'sum by (tenant, kind) (rate(tern_campaign_events_total{kind=~"complained|unsubscribed|suppressed"}' + RATE + "))", "ops"),
        ("Events waiting for the aggregator", 'max(tern_jetstream_consumer_pending{consumer="stats"})', "short"),
    ]),
    "tern-mailbox": ("Tern / Mailbox", [
        ("Sessions by protocol /s", "sum by (protocol) (rate(tern_mailbox_sessions_total" + RATE + "))", "ops"),
        ("Local deliveries by outcome /s", "sum by (outcome) (rate(tern_mailbox_deliveries_total" + RATE + "))", "ops"),
        ("Over-quota refusals /s", "sum(rate(tern_mailbox_over_quota_total" + RATE + "))", "ops"),
        ("Local jobs waiting", "max(tern_jetstream_consumer_pending{consumer=\"mailbox\"})", "short"),
    ]),
}


def panel(i, title, expr, unit):
    return {
        "id": i + 1,
        "type": "timeseries",
        "title": title,
        "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "gridPos": {"h": 8, "w": 12, "x": (i % 2) * 12, "y": (i // 2) * 8},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "targets": [{"refId": "A", "expr": expr, "legendFormat": "__auto"}],
    }


def dashboard(uid, title, panels):
    return {
        "uid": uid,
        "title": title,
        "tags": ["tern"],
        "schemaVersion": 39,
        "time": {"from": "now-1h", "to": "now"},
        "refresh": "30s",
        "templating": {"list": [{
            "name": "datasource", "type": "datasource", "query": "prometheus", "label": "Prometheus",
        }]},
        "panels": [panel(i, *p) for i, p in enumerate(panels)],
    }


if __name__ == "__main__":
    out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "dashboards")
    os.makedirs(out, exist_ok=True)
    for uid, (title, panels) in DASHBOARDS.items():
        with open(os.path.join(out, f"{uid}.json"), "w") as f:
            json.dump(dashboard(uid, title, panels), f, indent=2)
            f.write("\n")
