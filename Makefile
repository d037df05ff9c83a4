# Conveniences; the README's two commands are scripts/demo.sh and scripts/test.sh.
.PHONY: demo test proto render bench

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
