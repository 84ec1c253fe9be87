#!/usr/bin/env bash
# The baseline for the deploy benchmark: what the original write-up's Jenkins script
# does (see shared/seed), made runnable on one machine so it can be measured in the
# same harness as cutover. Kept faithful on purpose:
#   - "is Blue alive?" by curling it; alive -> deploy green, else blue;
#   - remove the target colour's old container, `docker run` the new one;
#   - poll its health every $INTERVAL seconds (the write-up: 10 s);
#   - rewrite service-url.inc and `nginx -s reload`;
#   - kill the old colour at once (requests still in flight on it are lost).
# Two changes were unavoidable to make it run at all, and are not improvements to its
# deploy logic: each colour publishes its own host port (the original binds both to
# 8080, so the second `docker run` fails), and ports are bound to 127.0.0.1.
#
# Inputs (environment): SERVICE IMAGE BLUE_PORT GREEN_PORT NGINX_PREFIX NGINX_CONF
# INTERVAL. Prints `@healthy <epoch>` when its poll sees the target healthy and
# `@switched <epoch>` after the reload, for the harness.
set -u

blue_url="http://127.0.0.1:${BLUE_PORT}/health"
if curl -s -f -o /dev/null "$blue_url"; then
  target=green; old=blue; port=$GREEN_PORT
else
  target=blue; old=green; port=$BLUE_PORT
fi
echo "deploying to ${target}"

docker rm -f "${SERVICE}-${target}" >/dev/null 2>&1
docker run -d --name "${SERVICE}-${target}" \
  --label "cutover.service=${SERVICE}" \
  -e "CUTOVER_COLOR=${target}" \
  -p "127.0.0.1:${port}:8080" "$IMAGE" >/dev/null || exit 1

healthy=0
for _ in $(seq 1 30); do
  sleep "$INTERVAL"
  if curl -s -f -o /dev/null "http://127.0.0.1:${port}/health"; then
    healthy=1
    break
  fi
done
[ "$healthy" -eq 1 ] || { echo "${target} never became healthy"; exit 1; }
echo "@healthy $(date +%s.%N)"

echo "set \$service_url http://127.0.0.1:${port};" > "${NGINX_PREFIX}/service-url.inc"
nginx -p "$NGINX_PREFIX" -c "$NGINX_CONF" -e "${NGINX_PREFIX}/error.log" -s reload || exit 1
echo "@switched $(date +%s.%N)"

docker rm -f "${SERVICE}-${old}" >/dev/null 2>&1
exit 0
