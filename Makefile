# One command per task. `make demo` and `make test` install what they need on first use:
# Debian's PL/Python for PostgreSQL 15 and a virtualenv at .venv with pyfuncs and its tools
# (and, for the tests, Debian's Chromium).

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PLPYTHON := /usr/share/postgresql/15/extension/plpython3u.control
WAL2JSON := /usr/lib/postgresql/15/lib/wal2json.so
CHROMIUM := /usr/bin/chromium
VALGRIND := /usr/bin/valgrind
PG_CONFIG := /usr/lib/postgresql/15/bin/pg_config
# the server's headers (postgresql-server-dev-15); pg_config alone comes with the client package
PG_HEADERS := /usr/include/postgresql/15/server/postgres.h
BACKSTOP := /usr/lib/postgresql/15/lib/pyfuncs_backstop.so
PRELOAD := /usr/lib/postgresql/15/lib/pyfuncs_preload.so
ENTRY := /usr/lib/postgresql/15/lib/pyfuncs_entry.so
# the Python PL/Python runs (Debian's, not a virtualenv's): its headers and its library
PY_HEADERS := /usr/include/python3.11/Python.h
LIBPYTHON := -L/usr/lib/$$(gcc -print-multiarch) -l:libpython3.11.so.1.0
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)

.PHONY: setup backstop preload entry locale demo live test lint bench footprint clean db-down

setup: $(PLPYTHON) $(WAL2JSON) $(BACKSTOP) $(PRELOAD) $(ENTRY) locale $(STAMP)

$(PLPYTHON):
	$(SUDO) apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq postgresql-15 postgresql-plpython3-15 postgresql-15-wal2json

# logical decoding's output plugin for realtime capture (README "Realtime: how changes are captured")
$(WAL2JSON):
	$(SUDO) apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq postgresql-15-wal2json

# the backstop that ends the session of a routine stuck in one C call (README "Stopping
# routines"): built against PostgreSQL's headers, installed where PostgreSQL keeps its libraries
$(PG_HEADERS):
	$(SUDO) apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq postgresql-server-dev-15 gcc

backstop: $(BACKSTOP)

$(BACKSTOP): pyfuncs/_pg/backstop.c $(PLPYTHON) $(PG_HEADERS)
	mkdir -p build
	gcc -O2 -Wall -Wextra -Wno-unused-parameter -Wno-missing-field-initializers -Werror -fPIC \
		-shared -I$$($(PG_CONFIG) --includedir-server) -o build/pyfuncs_backstop.so $<
	$(SUDO) install -m 755 build/pyfuncs_backstop.so $@

# starts PL/Python's interpreter once, in the postmaster, for every backend's first call
# (README "The first call"); the embedded cluster lists it in shared_preload_libraries
$(PY_HEADERS):
	$(SUDO) apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq libpython3.11-dev

preload: $(PRELOAD)

$(PRELOAD): pyfuncs/_pg/preload.c $(PLPYTHON) $(PG_HEADERS) $(PY_HEADERS)
	mkdir -p build
	gcc -O2 -Wall -Wextra -Wno-unused-parameter -Wno-missing-field-initializers -Werror -fPIC \
		-shared -I$$($(PG_CONFIG) --includedir-server) -I$(dir $(PY_HEADERS)) \
		-o build/pyfuncs_preload.so $< $(LIBPYTHON)
	$(SUDO) install -m 755 build/pyfuncs_preload.so $@

# a call's entry and a routine's queries in C (README "The entry library"): built with Python
# 3.11's headers and PostgreSQL's (PL/Python's result object), linked against nothing (it
# uses the libpython PL/Python loaded); -Os: its code comes cold at each call on a busy core
# (README, Benchmarks)
entry: $(ENTRY)

$(ENTRY): pyfuncs/_pg/entry.c $(PLPYTHON) $(PY_HEADERS) $(PG_HEADERS)
	mkdir -p build
	gcc -Os -Wall -Wextra -Wno-unused-parameter -Wno-missing-field-initializers -Werror -fPIC \
		-shared -I$$($(PG_CONFIG) --includedir-server) -I$(dir $(PY_HEADERS)) \
		-o build/pyfuncs_entry.so $<
	$(SUDO) install -m 755 build/pyfuncs_entry.so $@

# a locale other than C, for the tests of values written whatever a session's lc_monetary;
# made before the embedded cluster starts (glibc maps its locale archive once per process)
locale:
	@locale -a | grep -qx de_DE.utf8 || { test -f /usr/share/i18n/locales/de_DE || { \
		$(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq locales; }; \
		$(SUDO) localedef -i de_DE -f UTF-8 de_DE.UTF-8; }

# the browser client's tests drive Debian's Chromium (playwright's own browsers are not used)
$(CHROMIUM):
	$(SUDO) apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

demo: setup
	$(BIN)/python -m examples.academy.demo

live: setup
	$(BIN)/python -m examples.academy.live

# two workers share the cluster (tests/conftest.py); the exclusive tests then run alone
test: setup $(CHROMIUM)
	$(BIN)/pytest -n 2 --dist loadfile -m "not exclusive"
	$(BIN)/pytest -m exclusive

lint: setup
	$(BIN)/ruff check pyfuncs tests examples bench
	$(BIN)/ruff format --check pyfuncs tests examples bench
	$(BIN)/mypy

bench: setup
	$(BIN)/python -m bench.run; routines=$$?; $(BIN)/python -m bench.capture; capture=$$?; \
		$(BIN)/python -m bench.realtime && exit $$(( routines || capture ))

# the lines of memory a cold call touches, counted by Valgrind (bench/footprint.py; after
# `make bench`, whose database it copies)
footprint: setup $(VALGRIND)
	$(BIN)/python -m bench.footprint

$(VALGRIND):
	$(SUDO) apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq valgrind

db-down: setup
	$(BIN)/pyfuncs db down

clean: db-down
	rm -rf $(VENV) .pgdata
