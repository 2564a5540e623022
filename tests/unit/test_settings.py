from ctfleet.settings import Env, Settings


def test_settings_round_trip_through_the_environment():
    s = Settings(stack="ctf-test", facilities=("a", "b"), high_threshold=0.7, endpoint_url="http://127.0.0.1:9",
                 gpu_price_per_hour=0.31, api_url="http://x")
    assert Settings.from_env(s.to_env()) == s


def test_defaults_need_no_environment():
    s = Settings.from_env({})
    assert s == Settings()
    assert s.endpoint_url is None  # real AWS unless AWS_ENDPOINT_URL says otherwise


def test_endpoint_comes_from_boto3s_variable():
    assert Settings.from_env({Env.ENDPOINT: "http://127.0.0.1:5000"}).endpoint_url == "http://127.0.0.1:5000"


def test_resource_names_derive_from_the_stack():
    s = Settings(stack="prod", bucket_suffix="123456789012")
    assert s.raw_bucket == "prod-raw-123456789012"
    assert {q.name for q in s.queues} == {"prod-ingest", "prod-urgent", "prod-backfill"}
    assert all(q.dlq_name == q.name + "-dlq" for q in s.queues)
    assert s.job_queue("urgent") == s.urgent_queue and s.job_queue("backfill") == s.backfill_queue


def test_heartbeat_fits_the_job_visibility_timeouts():
    s = Settings()
    for q in (s.urgent_queue, s.backfill_queue):
        assert s.heartbeat_s * 2 <= q.visibility_timeout_s


def test_a_dead_workers_lease_lapses_before_its_message_reappears_and_a_live_one_renews_it_in_time():
    for s in (Settings(), Settings(job_visibility_s=12, heartbeat_s=6), Settings(job_visibility_s=300, heartbeat_s=60)):
        assert s.heartbeat_s < s.job_lease_s < s.job_visibility_s
