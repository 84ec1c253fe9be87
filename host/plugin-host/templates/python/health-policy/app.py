"""A cutover `health-policy` plugin: healthy when the probe's status is 200-399;
"not yet" otherwise, until `max_attempts` (if set) makes it "failed"."""
{header}

def settings(text: str) -> dict:
    config = parse_config(text, {"max_attempts": None})
    max_attempts = config["max_attempts"]
    if max_attempts is not None and (not isinstance(max_attempts, int) or max_attempts < 1):
        raise Err("`max_attempts` must be an integer of at least 1")
    return config


class WitWorld(wit_world.WitWorld):
    def validate_config(self, config: str) -> None:
        settings(config)

    def evaluate(self, config: str, input: HealthInput) -> HealthVerdict:
        probe = input.probe
        host.log(LogLevel.DEBUG, f"attempt {input.attempt}: status {probe.status}")
        if probe.status is not None and 200 <= probe.status < 400:
            return HealthVerdict_Healthy()
        why = f"status {probe.status}" if probe.status is not None else (probe.error or "no response")
        max_attempts = settings(config)["max_attempts"]
        if max_attempts is not None and input.attempt >= max_attempts:
            return HealthVerdict_Failed(f"{why} after {max_attempts} attempts")
        return HealthVerdict_NotYet(why)
