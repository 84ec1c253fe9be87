"""A cutover `proxy-template` plugin: writes `set $service_url http://ADDR:PORT;` to
`service-url.inc`, which the nginx config includes."""
{header}

def settings(text: str) -> dict:
    config = parse_config(text, {"variable": "service_url"})
    variable = config["variable"]
    if not isinstance(variable, str) or not variable.replace("_", "a").isalnum():
        raise Err(f"`variable` {variable!r} is not an nginx variable name")
    return config


class WitWorld(wit_world.WitWorld):
    def validate_config(self, config: str) -> None:
        settings(config)

    def render(self, config: str, input: TemplateInput) -> list[ProxyFile]:
        if input.target_weight != 100:
            raise Err(f"this template cannot split traffic ({input.target_weight}%)")
        if len(input.target.servers) != 1:
            raise Err(f"this template renders one server, not {len(input.target.servers)}")
        server = input.target.servers[0]
        if any(c.isspace() or c in ";{}\"'#$" for c in server.address):
            raise Err(f"the address {server.address!r} would inject nginx syntax")
        variable = settings(config)["variable"]
        contents = f"set ${variable} http://{server.address}:{server.port};\n"
        return [ProxyFile("service-url.inc", contents)]
