"""A cutover `deploy-gate` plugin: allow a deploy when a tag on HEAD contains
`pattern`, or every deploy when no pattern is configured."""
{header}

def settings(text: str) -> dict:
    config = parse_config(text, {"pattern": None})
    pattern = config["pattern"]
    if pattern is not None and (not isinstance(pattern, str) or not pattern):
        raise Err("`pattern` must be a non-empty string; leave it out to allow every deploy")
    return config


class WitWorld(wit_world.WitWorld):
    def validate_config(self, config: str) -> None:
        settings(config)

    def decide(self, config: str, input: GateInput) -> GateDecision:
        pattern = settings(config)["pattern"]
        host.log(LogLevel.DEBUG, f"tags on HEAD: {input.tags}")
        if pattern is None:
            return GateDecision_Allow("no pattern is configured: every deploy is allowed")
        for tag in input.tags:
            if pattern in tag:
                return GateDecision_Allow(f"tag `{tag}` on HEAD matches `{pattern}`")
        return GateDecision_Deny(f"no tag on HEAD contains `{pattern}`")
