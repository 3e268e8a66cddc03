/*
 * pyfuncs' preload: starts PL/Python's interpreter once, in the postmaster.
 *
 * PL/Python starts Python in each backend, at its first call of a PL/Python function:
 * 10-15 ms of every new connection's first call (reading the standard library's modules,
 * running site), before the pyfuncs runtime's own start. Listed in
 * shared_preload_libraries, this library does that start once, in the postmaster, exactly
 * as PL/Python would (the same Py_Initialize, with PL/Python's module `plpy` registered as
 * it registers it, but not imported), and every backend forked from it inherits the
 * interpreter ready: PL/Python's own start then finds Python initialized and only imports
 * plpy and makes its dictionaries. Nothing of PostgreSQL's state is touched and no Python
 * code of pyfuncs runs in the postmaster: the runtime still starts in each backend, from
 * its database's rows (boot.py).
 *
 * What backends share because of it (README "The first call"): Python's hash seed (one per
 * start of the server, not one per backend; with SipHash, knowing hash values does not
 * make colliding keys cheap to find), and the state of the modules Python imports while it
 * starts, none of which draws random numbers (random, uuid and secrets are imported, and
 * seeded, in each backend).
 *
 * It does nothing where it cannot do that exactly: loaded other than by
 * shared_preload_libraries, in a backend, with Python already started, without PL/Python,
 * or with a PL/Python built against another libpython. Python 3.12 refuses PL/Python's
 * registration of plpy after Python has started (a fatal error: it would abort every
 * backend), so there it does nothing either.
 */
#include "postgres.h"

#include <Python.h>
#include <dlfcn.h>
#include <unistd.h>

#include "fmgr.h"
#include "miscadmin.h"

PG_MODULE_MAGIC;

void		_PG_init(void);

typedef PyObject *(*ModuleInit) (void);

static void
skip(const char *why)
{
	ereport(LOG, (errmsg("pyfuncs_preload: Python not started ahead: %s", why)));
}

void
_PG_init(void)
{
	char		path[MAXPGPATH];
	void	   *plpython;
	ModuleInit	init_plpy;

	if (!process_shared_preload_libraries_in_progress || IsUnderPostmaster)
		return;
#if PY_VERSION_HEX >= 0x030C0000
	skip("Python 3.12 and later make PL/Python's registration of plpy, after Python's start, "
		 "a fatal error");
#else
	if (Py_IsInitialized())
	{
		skip("Python was started already");
		return;
	}
	snprintf(path, sizeof(path), "%s/plpython3%s", pkglib_path, DLSUFFIX);
	if (access(path, R_OK) != 0)
	{
		skip("PL/Python (plpython3) is not installed");
		return;
	}
	init_plpy = (ModuleInit) load_external_function(path, "PyInit_plpy", false, NULL);
	plpython = dlopen(path, RTLD_NOW | RTLD_NOLOAD);
	/* PL/Python's Python must be this one: the same libpython, not another copy */
	if (init_plpy == NULL || plpython == NULL ||
		dlsym(plpython, "Py_Initialize") != (void *) Py_Initialize)
	{
		skip("PL/Python was built against another Python");
		return;
	}
	if (PyImport_AppendInittab("plpy", init_plpy) != 0)
	{
		skip("plpy could not be registered");
		return;
	}
	Py_Initialize();
	ereport(LOG, (errmsg("pyfuncs_preload: Python %s started for PL/Python", PY_VERSION)));
#endif
}
