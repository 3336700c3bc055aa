# Everyday commands; each delegates to ./dev.sh so there is one source of truth.
default: test

setup:
    ./dev.sh install

run:
    ./dev.sh run

test *ARGS:
    ./dev.sh test {{ARGS}}

bench *ARGS:
    ./dev.sh bench {{ARGS}}

lint:
    ./dev.sh lint
