# Conveniences; the README's two commands are scripts/demo.sh and scripts/test.sh.
.PHONY: demo test proto render bench compose-e2e

demo:
	bash scripts/demo.sh

test:
	bash scripts/test.sh

proto:
	bash -c 'source scripts/bootstrap.sh && python scripts/gen_proto.py'

render:
	bash -c 'source scripts/bootstrap.sh && rlyard deploy render'

bench:
	bash -c 'source scripts/bootstrap.sh && python bench/tool_call.py'

# `docker compose up` for real (tests/e2e/test_docker_compose.py): builds the images offline
# (scripts/docker/build.sh; needs root, debootstrap and a running dockerd), starts the sql profile
# plus the trainer, runs a short SFT + GRPO config through the trainer service, crashes the SQL
# tool server mid-rollout; then the workers profile (tests/e2e/test_compose_workers.py): Redis, a
# Celery worker and the sampler service, a remote-sampler run whose groups go to the worker. See
# docs/deployment.md.
compose-e2e:
	bash -c 'source scripts/bootstrap.sh && python -m pytest tests/e2e/test_docker_compose.py tests/e2e/test_compose_workers.py tests/e2e/test_compose_vision.py tests/e2e/test_compose_secured.py -m slow -s -q'
