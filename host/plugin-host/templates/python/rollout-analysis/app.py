"""A cutover `rollout-analysis` plugin: hold until the canary served `min_requests` in
this step, abort when its share of 5xx responses is over `max_5xx_percent`, else
promote."""
{header}

def settings(text: str) -> dict:
    config = parse_config(text, {"min_requests": 20, "max_5xx_percent": 1.0})
    if not isinstance(config["min_requests"], int) or config["min_requests"] < 1:
        raise Err("`min_requests` must be an integer of at least 1")
    if not isinstance(config["max_5xx_percent"], (int, float)):
        raise Err("`max_5xx_percent` must be a number")
    return config


class WitWorld(wit_world.WitWorld):
    def validate_config(self, config: str) -> None:
        settings(config)

    def analyze(self, config: str, input: AnalysisInput) -> AnalysisDecision:
        config = settings(config)
        step = input.canary.this_step
        host.log(LogLevel.DEBUG, f"step {input.step_index}: {step.requests} requests")
        if step.requests < config["min_requests"]:
            return AnalysisDecision_Hold(f"{step.requests} of {config['min_requests']} requests so far")
        errors = 100.0 * step.server_errors / step.requests
        if errors > config["max_5xx_percent"]:
            return AnalysisDecision_Abort(f"{errors:.1f}% of the canary's responses were 5xx")
        return AnalysisDecision_Promote()
