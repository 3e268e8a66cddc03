/*
 * pyfuncs' entry: the work of a routine's `call` entry function (routines.py), in C.
 *
 * A call of a routine that returns a value runs in its entry function, whose frame is what
 * the watchdog and `db` find a call by (watchdog.py, db.py). That frame stays Python's,
 * and small: it hands over to an Entry, an object of this library's made once per routine,
 * which notes when the call began in the frame's slot `began` (a clocked one, see
 * note_began; one made by pyfuncs_entry_new is given that time by the frame) and does the
 * rest of what routines._CALL (the same work in Python, where this library is not
 * installed) does:
 *
 *   - the routine's module becomes the one whose call is under way (watchdog.CALLING), the
 *     call gets a level of settings of its own (identity.SETTINGS) and, with a timeout_ms,
 *     its deadline is the backstop's (backstop.CLOCK[0]); each is given back as it leaves,
 *     and the settings its queries changed are undone (identity.undo_settings);
 *   - the frames the watchdog let go of are dropped (watchdog.GRAVE), and the callbacks of
 *     weak references owed to the module run (watchdog.OWED);
 *   - the function runs in a contextvars.Context of its own, and so do the reading of its
 *     converted arguments, the making of a result that is not plain and the making of its
 *     error;
 *   - a stop leaves as a fresh RoutineInterrupted, any other exception as the PostgreSQL
 *     error `fail` makes of it.
 *
 * No bytecode runs between those steps, so no stop of the watchdog's (which Python raises
 * between two bytecodes) lands between them: where the Python entry needs its swaps before
 * its try and its undo after them, here they cannot be split. A split call (see
 * split_enter) has the entry frame call the function between two of them, and keeps a
 * record of what its call took until it gives it back. Python calls it with the GIL held. The library links against nothing: Python's functions are the process's own
 * (PL/Python's libpython), found as the library is loaded (backstop.py loads it only in a
 * Python 3.11, the version of the headers it is built with), and PostgreSQL's (it reads
 * PL/Python's result objects as PostgreSQL 15's headers describe them).
 *
 * What the call held (the result as the function returned it, the arguments it read, its
 * context) is let go of after all that is given back, as the Python entry's frame lets go
 * of its locals: their finalizers run outside the call.
 *
 * One library serves every database of a cluster, each with the runtime it was installed
 * with: pyfuncs_entry_new and pyfuncs_queries_new (below) take a dict, and never require
 * keys other than those they do now (tests/unit/test_backstop_abi.py); one that must gets
 * a new name.
 */
#include "postgres.h"

#include "plpy_resultobject.h"	/* (Python.h, as PL/Python includes it) */
#include <stdbool.h>
#include <stddef.h>
#include <structmember.h>
#include <time.h>

#define Py_BUILD_CORE 1			/* (the frame a clocked entry notes its start in, and */
#include "internal/pycore_frame.h"	/* the variables of a context) */
#include "internal/pycore_context.h"
#undef Py_BUILD_CORE

/* what a call took from the one it was entered from, to give back as it leaves */
typedef struct
{
	_PyInterpreterFrame *frame;	/* a split entry's: its call's entry frame */
	PyObject   *kept_level;		/* identity.SETTINGS' items, */
	PyObject   *kept_identity;
	PyObject   *outer;			/* watchdog.CALLING[0] */
	PyObject   *context;		/* a split entry's: the call's context, or NULL */
	double		prior;			/* the backstop's deadline */
}			Record;

typedef struct
{
	PyObject_HEAD
	/* what every call reads first, together (the call's objects are cold when the backend
	 * gets its turn among many) */
	vectorcallfunc vectorcall;
	PyObject   *function;		/* the routine's function */
	PyObject   *namespace;		/* its module's namespace: CALLING[0] during its calls */
	PyObject   *settings;		/* identity.SETTINGS: [level opened, identity] */
	PyObject   *calling;		/* watchdog.CALLING */
	double	   *deadline;		/* CLOCK[0] (clock's buffer, which stays where it is), or NULL */
	double		timeout;		/* seconds, with clock */
	PyObject   *grave;			/* watchdog.GRAVE (a list) */
	PyObject   *owed;			/* watchdog.OWED */
	PyObject   *unread;			/* routines.Unread: an argument read inside the call */
	PyObject   *zero;			/* 0 */
	const unsigned char *stop_set;	/* the watchdog's stop_set byte, or NULL: ask watch */
	long long	lowest;			/* ints in [lowest, longest) are kept as they are */
	long long	longest;
	bool		unbounded;		/* longest is past long long's range: no bound above */
	bool		small_kept;		/* every int below 2**60 in size is in [lowest, longest) */
	bool		clocked;		/* reads when its call began itself (pyfuncs_entry_clocked_new) */
	PyObject   *spare;			/* an empty Context a call left unshared: the next call's */
	PyObject   *began;			/* the float a clocked entry noted last (see note_began) */
	PyObject   *began_code;		/* the code of the frame it noted it in last, and */
	int			began_slot;		/* the slot of its `began` there (-1: it has none) */
	Record	   *records;		/* a split entry's calls under way, innermost last */
	int			depth;
	int			room;
	/* the rest */
	PyObject   *clock;			/* backstop.CLOCK (a memoryview of doubles), or NULL */
	PyObject   *stop_flag;		/* what stop_set points into (a memoryview), or NULL */
	PyObject   *watch;			/* the watchdog (or what stands for none) */
	PyObject   *fail;			/* exception -> the PostgreSQL error to raise */
	PyObject   *finish;			/* a result not plain -> one that is (or raises) */
	PyObject   *interrupted;	/* RoutineInterrupted */
	PyObject   *undo;			/* identity.undo_settings */
	PyObject   *pay;			/* watchdog.pay */
	PyObject   *shorts;			/* types of results kept as they are */
	PyObject   *longs;			/* types of results kept as they are up to `most` long */
	Py_ssize_t	most;
}			Entry;

/* (the steps of a call, each inside the call's function: with -Os, a call of a function
 * elsewhere costs the call a line of code more, cold at each backend's turn) */
#define HOT static inline __attribute__((always_inline))

static PyObject *stop_name;		/* "stop" */
static PyObject *check_name;	/* "check" */
static PyObject *began_name;	/* "began" */

static int
entry_traverse(Entry *self, visitproc visit, void *arg)
{
	Py_VISIT(self->function);
	Py_VISIT(self->namespace);
	Py_VISIT(self->fail);
	Py_VISIT(self->finish);
	Py_VISIT(self->interrupted);
	Py_VISIT(self->settings);
	Py_VISIT(self->calling);
	Py_VISIT(self->undo);
	Py_VISIT(self->clock);
	Py_VISIT(self->grave);
	Py_VISIT(self->owed);
	Py_VISIT(self->pay);
	Py_VISIT(self->watch);
	Py_VISIT(self->shorts);
	Py_VISIT(self->longs);
	Py_VISIT(self->unread);
	Py_VISIT(self->zero);
	Py_VISIT(self->stop_flag);
	Py_VISIT(self->spare);
	Py_VISIT(self->began);
	Py_VISIT(self->began_code);
	for (int i = 0; i < self->depth; i++)
	{
		Py_VISIT(self->records[i].kept_level);
		Py_VISIT(self->records[i].kept_identity);
		Py_VISIT(self->records[i].outer);
		Py_VISIT(self->records[i].context);
	}
	return 0;
}

static int
entry_clear(Entry *self)
{
	Py_CLEAR(self->function);
	Py_CLEAR(self->namespace);
	Py_CLEAR(self->fail);
	Py_CLEAR(self->finish);
	Py_CLEAR(self->interrupted);
	Py_CLEAR(self->settings);
	Py_CLEAR(self->calling);
	Py_CLEAR(self->undo);
	Py_CLEAR(self->clock);
	Py_CLEAR(self->grave);
	Py_CLEAR(self->owed);
	Py_CLEAR(self->pay);
	Py_CLEAR(self->watch);
	Py_CLEAR(self->shorts);
	Py_CLEAR(self->longs);
	Py_CLEAR(self->unread);
	Py_CLEAR(self->zero);
	Py_CLEAR(self->stop_flag);
	Py_CLEAR(self->spare);
	Py_CLEAR(self->began);
	Py_CLEAR(self->began_code);
	while (self->depth > 0)
	{
		Record	   *record = &self->records[--self->depth];

		Py_CLEAR(record->kept_level);
		Py_CLEAR(record->kept_identity);
		Py_CLEAR(record->outer);
		Py_CLEAR(record->context);
	}
	self->stop_set = NULL;
	self->deadline = NULL;
	return 0;
}

static void
entry_dealloc(Entry *self)
{
	PyObject_GC_UnTrack(self);
	entry_clear(self);
	PyMem_Free(self->records);
	Py_TYPE(self)->tp_free((PyObject *) self);
}

/*
 * list[i] = value, stealing value (PyList_SetItem's work, inline: with 16 clients a
 * core each page of code a call runs comes cold, and listobject.c's is one a call needs
 * for nothing else). Where the list has lost that item, PyList_SetItem says so.
 */
HOT void
swap_in(PyObject *list, Py_ssize_t i, PyObject *value)
{
	PyObject   *old;

	if (PyList_GET_SIZE(list) <= i)
	{
		PyList_SetItem(list, i, value);
		return;
	}
	old = PyList_GET_ITEM(list, i);
	PyList_SET_ITEM(list, i, value);
	Py_XDECREF(old);
}

/* PyObject_IsTrue, without its call for what a call meets every time (see swap_in) */
HOT int
truth(PyObject *value, PyObject *zero)
{
	if (value == zero || value == Py_None || value == Py_False)
		return 0;
	if (PyDict_CheckExact(value))
		return PyDict_GET_SIZE(value) != 0;
	return PyObject_IsTrue(value);
}

/* `callable(argument)` run in `context` (what Context.run does) */
static PyObject *
run_in(PyObject *context, PyObject *callable, PyObject *const *args, Py_ssize_t count)
{
	PyObject   *result;

	if (PyContext_Enter(context) < 0)
		return NULL;
	result = PyObject_Vectorcall(callable, args, count, NULL);
	if (PyContext_Exit(context) < 0)
		Py_CLEAR(result);
	return result;
}

/* Whether `result` is kept as it is (routines._CALL's tests, in their order): 1, 0, -1 */
HOT int
kept(Entry *self, PyObject *result)
{
	PyTypeObject *kind = Py_TYPE(result);
	int			found;

	if (kind == &PyLong_Type)
	{
		int			overflow;
		long long	value;

		/* (at most two of Python's 30-bit digits: inside bigint's range, which is the bound
		 * where max_result_bytes does not send every result to finish) */
		if (self->small_kept && Py_SIZE(result) >= -2 && Py_SIZE(result) <= 2)
			return 1;
		value = PyLong_AsLongLongAndOverflow(result, &overflow);

		if (value == -1 && PyErr_Occurred())
			return -1;
		if (!overflow && self->lowest <= value && (self->unbounded || value < self->longest))
			return 1;
	}
	else
	{
		found = PySequence_Contains(self->shorts, (PyObject *) kind);
		if (found != 0)
			return found;
	}
	found = PySequence_Contains(self->longs, (PyObject *) kind);
	if (found <= 0)
		return found;
	{
		Py_ssize_t	length = PyObject_Length(result);

		if (length < 0)
			return -1;
		return length <= self->most;
	}
}

/* A stop the function did not see (one a finalizer swallowed) raised: 0, or -1 with it */
HOT int
stop_seen(Entry *self)
{
	int			set = self->stop_set != NULL ? self->stop_set[0] != 0 : -1;
	PyObject   *checked;

	if (set < 0)
	{
		PyObject   *stop = PyObject_GetAttr(self->watch, stop_name);

		if (stop == NULL)
			return -1;
		Py_DECREF(stop);
		set = stop != Py_None;
	}
	if (!set)
		return 0;
	checked = PyObject_CallMethodNoArgs(self->watch, check_name);
	if (checked == NULL)
		return -1;
	Py_DECREF(checked);
	return 0;
}

/*
 * The function's call in `context`, its arguments read there (into `read`, `*made` of them)
 * and its result made plain. The arguments read and the result as the function returned
 * it (`*original`) are the caller's to let go of, after the call: the Python entry's locals
 * hold them until its frame ends, after its `finally`, so that a finalizer of theirs runs
 * outside the call, as Python's does.
 */
static PyObject *
called(Entry *self, PyObject *context, PyObject *const *args, Py_ssize_t count,
	   PyObject **read, Py_ssize_t *made, PyObject **original)
{
	PyObject   *result;
	int			plain;

	for (; *made < count; (*made)++)
	{
		PyObject   *arg = args[*made];

		read[*made] = Py_TYPE(arg) == (PyTypeObject *) self->unread
			? run_in(context, arg, NULL, 0) : Py_NewRef(arg);
		if (read[*made] == NULL)
			return NULL;
	}
	result = run_in(context, self->function, read, count);
	if (result == NULL)
		return NULL;
	*original = Py_NewRef(result);
	if (stop_seen(self) < 0)
		goto failed;
	plain = kept(self, result);
	if (plain < 0)
		goto failed;
	if (!plain)
		Py_SETREF(result, run_in(context, self->finish, original, 1));
	return result;
failed:
	Py_DECREF(result);
	return NULL;
}

/* time.monotonic()'s clock, in seconds */
HOT double
monotonic(void)
{
	struct timespec now;

	clock_gettime(CLOCK_MONOTONIC, &now);
	return now.tv_sec + now.tv_nsec * 1e-9;
}

/*
 * A clocked entry's call notes when it began in its entry frame (routines._CALL_CLOCKED,
 * Python's innermost frame as it calls the Entry): the local `began` that frame leaves
 * unbound for this, which the watchdog reads (watchdog.local; unbound, it takes the time of
 * its look, at most a few bytecodes later). A frame without that local is left alone.
 * Python's clock and its float, called from the entry frame, were a seventh of the memory
 * a trivial call touches on top of PL/Python's own (their code, cold at each backend's turn
 * with 16 clients a core).
 */
HOT int
note_began(Entry *self, double began)
{
	_PyInterpreterFrame *frame = PyThreadState_Get()->cframe->current_frame;
	PyObject   *value = self->began;

	if (frame == NULL)
		return 0;
	if ((PyObject *) frame->f_code != self->began_code)
	{
		PyCodeObject *code = frame->f_code;

		/* (the code held: no other code takes its address while the slot is kept) */
		Py_XSETREF(self->began_code, Py_NewRef((PyObject *) code));
		self->began_slot = -1;
		for (int i = 0; i < code->co_nlocals; i++)
			if (PyTuple_GET_ITEM(code->co_localsplusnames, i) == began_name)
			{
				self->began_slot = i;
				break;
			}
	}
	if (self->began_slot < 0)
		return 0;
	/* the float noted last, where nothing holds it any more (the frame it was noted in has
	 * ended, and the watchdog kept none of it): nothing can tell it from a new one */
	if (value != NULL && Py_REFCNT(value) == 1)
	{
		((PyFloatObject *) value)->ob_fval = began;
		Py_INCREF(value);
	}
	else
	{
		if ((value = PyFloat_FromDouble(began)) == NULL)
			return -1;
		Py_XSETREF(self->began, Py_NewRef(value));
	}
	Py_XSETREF(frame->localsplus[self->began_slot], value);
	return 0;
}

/*
 * The error a call leaves with, made of the one raised (Python's error indicator, which it
 * replaces): a stop as a fresh RoutineInterrupted, nothing of the routine's travelling out
 * with it; any other exception as the PostgreSQL error `fail` makes of it, in the call's
 * `context` (NULL: the current one).
 */
static void
made_error(Entry *self, PyObject *context)
{
	if (PyErr_ExceptionMatches(self->interrupted))
	{
		/* a fresh one: nothing of the routine's travels out with it */
		PyErr_Clear();
		PyErr_SetNone(self->interrupted);
	}
	else
	{
		PyObject   *kind,
				   *value,
				   *trace,
				   *error;

		PyErr_Fetch(&kind, &value, &trace);
		if (kind == NULL)
		{
			PyErr_SetString(PyExc_SystemError, "pyfuncs: a call failed without an error");
			PyErr_Fetch(&kind, &value, &trace);
		}
		PyErr_NormalizeException(&kind, &value, &trace);
		if (trace != NULL)
			PyException_SetTraceback(value, trace);
		/* (made in the call's context: its __str__ is the routine's) */
		error = context != NULL ? run_in(context, self->fail, &value, 1)
			: PyObject_CallOneArg(self->fail, value);
		Py_XDECREF(kind);
		Py_XDECREF(value);
		Py_XDECREF(trace);
		if (error != NULL)
		{
			PyErr_SetObject((PyObject *) Py_TYPE(error), error);
			Py_DECREF(error);
		}
		else if (PyErr_ExceptionMatches(self->interrupted))
		{
			PyErr_Clear();
			PyErr_SetNone(self->interrupted);
		}
	}
}

/*
 * A call takes a deadline, module and level of its own, keeping the outer call's in
 * `record` (no Python code runs: nothing can land between the swaps); 0, or -1 with an
 * error and nothing taken.
 */
HOT int
took(Entry *self, Record *record, double began)
{
	if (PyList_GET_SIZE(self->settings) != 2 || PyList_GET_SIZE(self->calling) != 1)
	{
		PyErr_SetString(PyExc_SystemError, "pyfuncs: identity.SETTINGS or watchdog.CALLING "
						"lost its items");
		return -1;
	}
	if (self->deadline != NULL)
	{
		record->prior = self->deadline[0];
		self->deadline[0] = began + self->timeout;
	}
	record->kept_level = Py_NewRef(PyList_GET_ITEM(self->settings, 0));
	record->kept_identity = Py_NewRef(PyList_GET_ITEM(self->settings, 1));
	record->outer = Py_NewRef(PyList_GET_ITEM(self->calling, 0));
	swap_in(self->settings, 0, Py_NewRef(self->zero));
	swap_in(self->calling, 0, Py_NewRef(self->namespace));
	return 0;
}

/* A call's context: the spare, or a new one; NULL with an error */
HOT PyObject *
opening(Entry *self)
{
	PyObject   *context = self->spare;

	if (context != NULL)
	{
		self->spare = NULL;
		return context;
	}
	return PyContext_New();
}

/*
 * Drops the frames the watchdog let go of, inside what the call took and in its `context`
 * (NULL: the current one), so that a finalizer of the routine's that runs there sets
 * nothing in another's (decimal's context: round 79); 0, or -1 with an error.
 */
HOT int
buried(Entry *self, PyObject *context)
{
	int			done;

	if (!PyList_GET_SIZE(self->grave))
		return 0;
	if (context != NULL && PyContext_Enter(context) < 0)
		return -1;
	done = PyList_SetSlice(self->grave, 0, PY_SSIZE_T_MAX, NULL);
	if (context != NULL && PyContext_Exit(context) < 0)
		done = -1;
	return done;
}

/*
 * Gives the call it was entered from back its deadline, module, level and identity (the
 * record's references, stolen) and undoes the settings this call's queries changed, as a `finally`
 * runs: with the call's error put aside, and replaced by the undo's own. Returns `result`
 * (stolen), or NULL with Python's error set.
 */
HOT PyObject *
given_back(Entry *self, PyObject *result, Record *record)
{
	PyObject   *opened;

	if (self->deadline != NULL)
		self->deadline[0] = record->prior;
	swap_in(self->calling, 0, record->outer);
	opened = PyList_GET_SIZE(self->settings) > 0 ? PyList_GET_ITEM(self->settings, 0) : Py_None;
	Py_INCREF(opened);
	swap_in(self->settings, 0, record->kept_level);
	swap_in(self->settings, 1, record->kept_identity);
	{
		PyObject   *kind,
				   *value,
				   *trace;
		int			open;
		bool		undone = true;

		PyErr_Fetch(&kind, &value, &trace);
		open = truth(opened, self->zero);
		if (open != 0)
		{
			PyObject   *done = open < 0 ? NULL : PyObject_CallOneArg(self->undo, opened);

			undone = done != NULL;
			Py_XDECREF(done);
		}
		if (undone)
			PyErr_Restore(kind, value, trace);
		else
		{
			Py_CLEAR(result);
			Py_XDECREF(kind);
			Py_XDECREF(value);
			Py_XDECREF(trace);
		}
	}
	Py_DECREF(opened);
	return result;
}

/*
 * A call's context let go of: one it left empty, that nothing else holds (a ContextVar's
 * token would) nor refers to, is the next call's, as fresh as a new one (making and
 * freeing one was a twelfth of the memory a trivial call touches on top of PL/Python's own).
 */
HOT void
spared(Entry *self, PyObject *context)
{
	if (context != NULL && self->spare == NULL && Py_REFCNT(context) == 1 &&
		PyContext_CheckExact(context) && ((PyContext *) context)->ctx_vars->h_count == 0 &&
		((PyContext *) context)->ctx_weakreflist == NULL)
		self->spare = context;
	else
		Py_XDECREF(context);
}

/*
 * The call: args[0] is when it began (the entry frame's `began`), the rest the function's
 * arguments; or, for a clocked entry, all its arguments.
 */
static PyObject *
entry_call(PyObject *callable, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
	Entry	   *self = (Entry *) callable;
	Py_ssize_t	count = PyVectorcall_NARGS(nargsf);
	Record		record = {0};
	PyObject   *context = NULL,
			   *result = NULL;
	PyObject   *small[8],
			  **read = small,
			   *original = NULL;
	Py_ssize_t	made = 0;
	PyObject   *const *params = args + 1;	/* the function's arguments */
	double		began = 0;

	if (kwnames != NULL || (!self->clocked && count < 1))
	{
		PyErr_SetString(PyExc_TypeError, self->clocked
						? "pyfuncs: an entry takes the routine's arguments, by position"
						: "pyfuncs: an entry takes when its call began, then the routine's "
						"arguments");
		return NULL;
	}
	if (self->clocked)
	{
		began = monotonic();
		if (note_began(self, began) < 0)
			return NULL;
		params = args;
	}
	else
	{
		count--;
		if (self->deadline != NULL && (began = PyFloat_CheckExact(args[0])
									   ? PyFloat_AS_DOUBLE(args[0])
									   : PyFloat_AsDouble(args[0])) == -1 && PyErr_Occurred())
			return NULL;
	}
	if (count > 8 && !(read = PyMem_Malloc(count * sizeof(PyObject *))))
		return PyErr_NoMemory();
	if (took(self, &record, began) < 0)
	{
		if (read != small)
			PyMem_Free(read);
		return NULL;
	}
	if ((context = opening(self)) == NULL || buried(self, context) < 0)
		goto failed;
	{
		int			owing = truth(self->owed, self->zero);

		if (owing < 0)
			goto failed;
		if (owing)
		{
			/* (callbacks of its weak references that came due elsewhere) */
			PyObject   *paid = run_in(context, self->pay, &self->namespace, 1);

			if (paid == NULL)
				goto failed;
			Py_DECREF(paid);
		}
	}
	result = called(self, context, params, count, read, &made, &original);
	if (result != NULL)
		goto leave;
failed:
	made_error(self, context);
leave:
	result = given_back(self, result, &record);
	spared(self, context);
	/* what the Python entry's frame holds until it ends (see called) */
	Py_XDECREF(original);
	while (made > 0)
		Py_DECREF(read[--made]);
	if (read != small)
		PyMem_Free(read);
	return result;
}

/*
 * A split call (a clocked Entry's, where the runtime asks for it): its entry frame calls the
 * routine's function itself, between the Entry's enter() and leave(result), in a `try` whose handler
 * calls failed() (routines._CALL_SPLIT). The function's frame then runs in the evaluation
 * of the entry frame's, where an Entry's C call of it started an evaluation of its own:
 * with 16 clients a core, those were a twentieth of the memory a trivial call touches.
 *
 * Python raises a stop where it looks for one: as a frame starts, at a jump backwards and
 * after a call of C (here: enter's, the function's if it is C, leave's and failed's). One
 * that lands after enter's or the function's call is the call's own, caught by the handler;
 * one that lands after leave's or failed's, the call having given back what it took, leaves
 * as the stop it is. So a call's record (what it took, and its entry frame) stays with the
 * Entry from enter until whichever of leave and failed ends the call in that frame: a
 * record of another frame's (an outer call of the same routine's) is left alone.
 */

/* the record of the call under way in the current frame, or NULL */
HOT Record *
current(Entry *self)
{
	_PyInterpreterFrame *frame = PyThreadState_Get()->cframe->current_frame;

	if (self->depth > 0 && self->records[self->depth - 1].frame == frame)
		return &self->records[self->depth - 1];
	return NULL;
}

/*
 * Ends the current call: exits its context, gives back what it took (given_back: `result`
 * stolen, or NULL with Python's error set, which the undo's replaces) and lets go of its
 * context.
 */
HOT PyObject *
ended(Entry *self, PyObject *result)
{
	Record		record = self->records[--self->depth];

	if (record.context != NULL && PyContext_Exit(record.context) < 0)
		Py_CLEAR(result);
	result = given_back(self, result, &record);
	spared(self, record.context);
	return result;
}

/*
 * enter(function): the call begins (see entry_call), in its context until it ends; returns
 * `function`, for the entry frame to call
 */
HOT PyObject *
split_enter(PyObject *op, PyObject *function)
{
	Entry	   *self = (Entry *) op;
	Record		record = {.frame = PyThreadState_Get()->cframe->current_frame};
	double		began = monotonic();
	int			depth;
	PyObject   *context;

	if (current(self) != NULL)
	{
		/* (none can be: leave and failed run whenever enter did, see steps[]) */
		PyErr_SetString(PyExc_SystemError, "pyfuncs: a call's record was left in its frame");
		return NULL;
	}
	if (note_began(self, began) < 0)
		return NULL;
	if (self->depth == self->room)
	{
		int			room = self->room ? 2 * self->room : 4;
		Record	   *records = PyMem_Realloc(self->records, room * sizeof(Record));

		if (records == NULL)
			return PyErr_NoMemory();
		self->records = records;
		self->room = room;
	}
	if (took(self, &record, began) < 0)
		return NULL;
	self->records[depth = self->depth++] = record;
	/* (from here on, Python code may run: a call of this routine's inside it moves records) */
	if ((context = opening(self)) == NULL)
		return NULL;
	if (PyContext_Enter(context) < 0)
	{
		Py_DECREF(context);
		return NULL;
	}
	self->records[depth].context = context;
	if (buried(self, NULL) < 0)
		return NULL;
	{
		int			owing = truth(self->owed, self->zero);

		if (owing < 0)
			return NULL;
		if (owing)
		{
			/* (callbacks of its weak references that came due elsewhere) */
			PyObject   *paid = PyObject_CallOneArg(self->pay, self->namespace);

			if (paid == NULL)
				return NULL;
			Py_DECREF(paid);
		}
	}
	return Py_NewRef(function);
}

/*
 * leave(result): the function returned `result`; the call ends with it made plain, or with
 * the error that making it plain raised (made here: `result`, which the entry frame holds
 * until this returns, is let go of after what the call took was given back, as the Python
 * entry's frame lets go of its local)
 */
HOT PyObject *
split_leave(PyObject *op, PyObject *result)
{
	Entry	   *self = (Entry *) op;
	int			plain;

	if (current(self) == NULL)
	{
		PyErr_SetString(PyExc_SystemError, "pyfuncs: leave() without a call under way");
		return NULL;
	}
	if (stop_seen(self) < 0 || (plain = kept(self, result)) < 0)
		result = NULL;
	else if (plain)
		Py_INCREF(result);
	else
		result = PyObject_CallOneArg(self->finish, result);
	if (result == NULL)
		made_error(self, NULL);
	if (current(self) == NULL)	/* (a call inside it lost its record: nothing to end) */
	{
		Py_XDECREF(result);
		PyErr_SetString(PyExc_SystemError, "pyfuncs: a call's record was lost");
		return NULL;
	}
	return ended(self, result);
}

/*
 * failed(): the exception the handler caught, as the error the call leaves with (returned,
 * for the entry frame to raise after its handler: nothing of the routine's is its context).
 * If it was raised in the call, the call ends, and the exception is let go of inside it: the
 * finalizers of its frames' locals run under the call's limits.
 */
static PyObject *
split_failed(PyObject *op)
{
	Entry	   *self = (Entry *) op;
	_PyErr_StackItem *handled = PyThreadState_Get()->exc_info;
	PyObject   *caught = handled->exc_value,
			   *kind,
			   *value,
			   *trace;

	if (caught == NULL || !PyExceptionInstance_Check(caught))
	{
		PyErr_SetString(PyExc_SystemError, "pyfuncs: failed() is called in a handler");
		return NULL;
	}
	/* the handler's exception, taken out of it (what is raised here has no context) */
	handled->exc_value = Py_NewRef(Py_None);
	PyErr_Restore(Py_NewRef(Py_TYPE(caught)), caught, PyException_GetTraceback(caught));
	made_error(self, NULL);
	if (current(self) != NULL)
		ended(self, NULL);
	PyErr_Fetch(&kind, &value, &trace);
	PyErr_NormalizeException(&kind, &value, &trace);
	Py_XDECREF(kind);
	Py_XDECREF(trace);
	return value;
}

/*
 * enter, leave and failed are types (whose vectorcall is the step: Python calls a type's
 * without checking the recursion limit, and, one with a vectorcall and no instances, by a
 * specialized instruction), called with the Entry first: enter(entry, function). Python
 * checks the limit before it calls a method of C, and raises RecursionError instead, and the
 * limit moves during a call (held work raises it, the watchdog's look gives it back): with
 * methods, round 79 had enter run and failed not, and the call kept its module and context
 * for good. So leave and failed run whenever enter has: a call that began always ends.
 */
static PyTypeObject EntryType;

/* the Entry a step is given first; NULL with a TypeError */
static inline Entry *
step_entry(PyObject *const *args, size_t nargsf, PyObject *kwnames, Py_ssize_t count,
		   const char *usage)
{
	if (kwnames == NULL && PyVectorcall_NARGS(nargsf) == count &&
		Py_TYPE(args[0]) == &EntryType)
		return (Entry *) args[0];
	PyErr_Format(PyExc_TypeError, "pyfuncs: %s", usage);
	return NULL;
}

static PyObject *
enter_step(PyObject *type, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
	Entry	   *self = step_entry(args, nargsf, kwnames, 2, "enter(entry, function)");

	return self == NULL ? NULL : split_enter((PyObject *) self, args[1]);
}

static PyObject *
leave_step(PyObject *type, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
	Entry	   *self = step_entry(args, nargsf, kwnames, 2, "leave(entry, result)");

	return self == NULL ? NULL : split_leave((PyObject *) self, args[1]);
}

static PyObject *
failed_step(PyObject *type, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
	Entry	   *self = step_entry(args, nargsf, kwnames, 1, "failed(entry), in a handler");

	return self == NULL ? NULL : split_failed((PyObject *) self);
}

#define STEP_TYPE(name, step) { \
	PyVarObject_HEAD_INIT(NULL, 0) \
	.tp_name = "pyfuncs." name, \
	.tp_basicsize = sizeof(PyObject), \
	.tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_IMMUTABLETYPE | \
		Py_TPFLAGS_DISALLOW_INSTANTIATION, \
	.tp_vectorcall = step, \
}

static PyTypeObject steps[3] = {
	STEP_TYPE("enter", enter_step),
	STEP_TYPE("leave", leave_step),
	STEP_TYPE("failed", failed_step),
};

/* entry.enter, .leave, .failed: the step (closure: its index in steps) */
static PyObject *
step_of(PyObject *entry, void *closure)
{
	PyTypeObject *step = &steps[(intptr_t) closure];

	if (PyType_Ready(step) < 0)
		return NULL;
	return Py_NewRef((PyObject *) step);
}

static PyGetSetDef split_steps[] = {
	{"enter", step_of, NULL, NULL, (void *) 0},
	{"leave", step_of, NULL, NULL, (void *) 1},
	{"failed", step_of, NULL, NULL, (void *) 2},
	{NULL}
};

static PyTypeObject EntryType = {
	PyVarObject_HEAD_INIT(NULL, 0)
	.tp_name = "pyfuncs.entry",
	.tp_basicsize = sizeof(Entry),
	.tp_dealloc = (destructor) entry_dealloc,
	.tp_vectorcall_offset = offsetof(Entry, vectorcall),
	.tp_call = PyVectorcall_Call,
	.tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
	.tp_traverse = (traverseproc) entry_traverse,
	.tp_clear = (inquiry) entry_clear,
	.tp_getset = split_steps,
};

/* config[name], a new reference; NULL with KeyError if missing */
static PyObject *
item(PyObject *config, const char *name)
{
	PyObject   *value = PyDict_GetItemString(config, name);

	if (value == NULL)
	{
		PyErr_Format(PyExc_KeyError, "pyfuncs: an entry's config lacks %s", name);
		return NULL;
	}
	return Py_NewRef(value);
}

/* config[name] (borrowed), or NULL without an error: a key an older runtime does not give */
static PyObject *
optional(PyObject *config, const char *name)
{
	return PyDict_GetItemString(config, name);
}

/*
 * An Entry, from a dict of what routines.Routine._entry binds its entry functions to
 * (`function`, `namespace`, `fail`, `finish`, `RoutineInterrupted`, `settings`, `calling`,
 * `undo`, `clock`, `timeout`, `grave`, `owed`, `pay`, `watch`, `short`, `long`, `most`,
 * `lowest`, `longest`, `unread`; and, if given, `stop_set`, the byte that says whether
 * `watch` holds a stop). Returns NULL with Python's error set on a config it cannot use.
 */
static PyObject *
entry_new(PyObject *config, bool clocked)
{
	Entry	   *self;
	PyObject   *timeout;

	if (!PyDict_Check(config))
	{
		PyErr_SetString(PyExc_TypeError, "pyfuncs: an entry's config is a dict");
		return NULL;
	}
	if (stop_name == NULL)
	{
		if (PyType_Ready(&EntryType) < 0)
			return NULL;
		stop_name = PyUnicode_InternFromString("stop");
		check_name = PyUnicode_InternFromString("check");
		began_name = PyUnicode_InternFromString("began");
		if (stop_name == NULL || check_name == NULL || began_name == NULL)
			return NULL;
	}
	self = PyObject_GC_New(Entry, &EntryType);
	if (self == NULL)
		return NULL;
	memset((char *) self + offsetof(Entry, vectorcall), 0,
		   sizeof(Entry) - offsetof(Entry, vectorcall));
	self->vectorcall = entry_call;
	self->clocked = clocked;
	if (!(self->function = item(config, "function")) ||
		!(self->namespace = item(config, "namespace")) ||
		!(self->fail = item(config, "fail")) ||
		!(self->finish = item(config, "finish")) ||
		!(self->interrupted = item(config, "RoutineInterrupted")) ||
		!(self->settings = item(config, "settings")) ||
		!(self->calling = item(config, "calling")) ||
		!(self->undo = item(config, "undo")) ||
		!(self->grave = item(config, "grave")) ||
		!(self->owed = item(config, "owed")) ||
		!(self->pay = item(config, "pay")) ||
		!(self->watch = item(config, "watch")) ||
		!(self->shorts = item(config, "short")) ||
		!(self->longs = item(config, "long")) ||
		!(self->unread = item(config, "unread")) ||
		!(timeout = PyDict_GetItemString(config, "timeout")))
		goto bad;
	self->zero = PyLong_FromLong(0);
	if (self->zero == NULL)
		goto bad;
	if (!PyList_CheckExact(self->settings) || PyList_GET_SIZE(self->settings) != 2 ||
		!PyList_CheckExact(self->calling) || PyList_GET_SIZE(self->calling) != 1 ||
		!PyList_CheckExact(self->grave) || !PyType_Check(self->unread) ||
		!PyExceptionClass_Check(self->interrupted))
	{
		PyErr_SetString(PyExc_TypeError, "pyfuncs: an entry's config has the wrong kinds");
		goto bad;
	}
	if (timeout != Py_None)
	{
		Py_buffer  *view;

		self->timeout = PyFloat_AsDouble(timeout);
		if (self->timeout == -1 && PyErr_Occurred())
			goto bad;
		if (!(self->clock = item(config, "clock")))
			goto bad;
		if (!PyMemoryView_Check(self->clock) ||
			(view = PyMemoryView_GET_BUFFER(self->clock))->len < (Py_ssize_t) sizeof(double) ||
			view->readonly || view->itemsize != sizeof(double))
		{
			PyErr_SetString(PyExc_TypeError, "pyfuncs: an entry's clock is a memoryview of "
							"doubles");
			goto bad;
		}
		self->deadline = (double *) view->buf;
	}
	{
		PyObject   *most = PyDict_GetItemString(config, "most"),
				   *lowest = PyDict_GetItemString(config, "lowest"),
				   *longest = PyDict_GetItemString(config, "longest");

		if (most == NULL || lowest == NULL || longest == NULL)
		{
			PyErr_SetString(PyExc_KeyError, "pyfuncs: an entry's config lacks its bounds");
			goto bad;
		}
		self->most = PyLong_AsSsize_t(most);
		self->lowest = PyLong_AsLongLong(lowest);
		if (PyErr_Occurred())
			goto bad;
		{
			int			overflow;

			self->longest = PyLong_AsLongLongAndOverflow(longest, &overflow);
			if (PyErr_Occurred())
				goto bad;
			if (overflow < 0)
			{
				PyErr_SetString(PyExc_OverflowError, "pyfuncs: an entry's longest is too low");
				goto bad;
			}
			self->unbounded = overflow > 0;	/* (bigint's: 2**63) */
			self->small_kept = self->lowest <= -(1LL << 60) &&
				(self->unbounded || self->longest >= (1LL << 60));
		}
	}
	{
		/* (optional: a runtime from before it asks `watch` for its `stop`) */
		PyObject   *flag = optional(config, "stop_set");

		if (flag != NULL)
		{
			if (!PyMemoryView_Check(flag) || PyMemoryView_GET_BUFFER(flag)->len < 1 ||
				PyMemoryView_GET_BUFFER(flag)->itemsize != 1)
			{
				PyErr_SetString(PyExc_TypeError, "pyfuncs: an entry's stop_set is a memoryview "
								"of bytes");
				goto bad;
			}
			self->stop_flag = Py_NewRef(flag);
			self->stop_set = PyMemoryView_GET_BUFFER(flag)->buf;
		}
	}
	PyObject_GC_Track(self);
	return (PyObject *) self;
bad:
	Py_DECREF(self);
	return NULL;
}

PyObject *
pyfuncs_entry_new(PyObject *config)
{
	return entry_new(config, false);
}

/*
 * An Entry that reads when its call began itself, and notes it in its entry frame (see
 * note_began): its calls take the routine's arguments alone. (A name of its own: a runtime
 * from before it passes the time first, to pyfuncs_entry_new's.)
 */
PyObject *
pyfuncs_entry_clocked_new(PyObject *config)
{
	return entry_new(config, true);
}

/*
 * The query of a routine's `db` (db.Db._run, the same work in Python where this library is
 * not installed): run(handle, query, params), called by db's methods.
 *
 *   - refused in a stopped call (watchdog.guard), and to code that is not the call's: the
 *     first routine module's code on the stack outward from db's method must be the
 *     handle's module, the innermost entry frame a call of that module's, whose query is
 *     not the one under way (db._from_the_call, which is called to refuse, with its
 *     reasons, wherever this walk does not accept);
 *   - counted for max_db_ops; the query text a plain str and the parameters a sequence of
 *     the runtime's own; the plan kept by text and the parameters' Python types (db._DIRECT;
 *     db._guarded prepares one not kept yet);
 *   - its deadline lent and its identity kept around the query (db.begin and db.end, read
 *     as db has them at each query), the call's entry frame noted as the one whose query is
 *     under way (db._QUERYING), an error of the query's told to deadline.expired and
 *     db._failed, what end told to db._ended;
 *   - its result's columns converted as they are (db._Prepared.rows, which this calls
 *     unless nothing of the result needs converting).
 *
 * No bytecode runs between those steps (Python calls this with the GIL held), as none of
 * the watchdog's stops lands in db._run, which is its bookkeeping.
 */
typedef struct
{
	PyObject_HEAD
	vectorcallfunc vectorcall;
	PyObject   *db;				/* db's namespace: begin, end */
	PyObject   *stopping;		/* watchdog's: WATCHDOG, disposing */
	PyObject   *from_the_call;	/* db._from_the_call */
	PyObject   *guard;			/* watchdog.guard */
	PyObject   *owners;			/* watchdog.ROUTINE_CODE */
	PyObject   *entries;		/* watchdog.ENTRIES */
	PyObject   *calling;		/* watchdog.CALLING */
	PyObject   *querying;		/* db._QUERYING */
	PyObject   *text;			/* db._text */
	PyObject   *plans;			/* db._DIRECT */
	PyObject   *guarded;		/* db._guarded */
	PyObject   *may_not_run;	/* deadline.may_not_run */
	PyObject   *expired;		/* deadline.expired */
	PyObject   *failed;			/* db._failed */
	PyObject   *ended;			/* db._ended */
	PyObject   *execute;		/* plpy.execute */
	PyObject   *spi_error;		/* plpy.SPIError */
	PyObject   *db_type;		/* db.Db */
	PyObject   *prepared_type;	/* db._Prepared */
	PyObject   *results;		/* the type of PL/Python's results, once seen */
	Py_ssize_t	slots[4];		/* where Db._module, _Prepared's plan, types, fixes are */
	/* the watchdog seen last, its stop_set (a memoryview of the byte `stop_byte` points
	 * into) and its budgets (a list): what says whether it holds a stop and whether calls
	 * under way count queries, read without looking their names up (see watched) */
	PyObject   *watchdog;
	PyObject   *stop_flag;
	const unsigned char *stop_byte;
	PyObject   *budgets;
}			Queries;

#define QUERIES_OBJECTS 19
#define QUERIES_FIELD(self, i) (((PyObject **) &(self)->db)[i])

static const char *const queries_names[QUERIES_OBJECTS] = {
	"db", "stopping", "from_the_call", "guard", "owners", "entries", "calling", "querying",
	"text", "plans", "guarded", "may_not_run", "expired", "failed", "ended", "execute",
	"SPIError", "Db", "Prepared",
};

#define NAMES 15
static PyObject *names[NAMES];	/* interned: see queries_new */

enum
{
	N_WATCHDOG, N_DISPOSING, N_BEGIN, N_END, N_STOP, N_BUDGETS, N_COUNT, N_MODULE, N_PLAN,
	N_PLAN_OF, N_COLTYPES, N_ROWS, N_TYPES, N_FIXES, N_STOP_SET,
};

static int
queries_traverse(Queries *self, visitproc visit, void *arg)
{
	for (int i = 0; i < QUERIES_OBJECTS; i++)
		Py_VISIT(QUERIES_FIELD(self, i));
	Py_VISIT(self->results);
	Py_VISIT(self->watchdog);
	Py_VISIT(self->stop_flag);
	Py_VISIT(self->budgets);
	return 0;
}

static int
queries_clear(Queries *self)
{
	for (int i = 0; i < QUERIES_OBJECTS; i++)
		Py_CLEAR(QUERIES_FIELD(self, i));
	Py_CLEAR(self->results);
	Py_CLEAR(self->watchdog);
	Py_CLEAR(self->stop_flag);
	Py_CLEAR(self->budgets);
	self->stop_byte = NULL;
	return 0;
}

static void
queries_dealloc(Queries *self)
{
	PyObject_GC_UnTrack(self);
	queries_clear(self);
	Py_TYPE(self)->tp_free((PyObject *) self);
}

/* namespace[name], borrowed; NULL with KeyError if it is not there */
static PyObject *
global(PyObject *namespace, int name)
{
	PyObject   *value = PyDict_GetItemWithError(namespace, names[name]);

	if (value == NULL && !PyErr_Occurred())
		PyErr_SetObject(PyExc_KeyError, names[name]);
	return value;
}

enum
{
	S_MODULE, S_PLAN, S_TYPES, S_FIXES,
};

static const int slot_names[4] = {N_MODULE, N_PLAN, N_TYPES, N_FIXES};

/*
 * Attribute `slot` of `object` (of those in Queries.slots), a new reference: read where
 * its class keeps it when `object` is of that class exactly (as Python's own LOAD_ATTR
 * does, without looking the name up), else looked up.
 */
static PyObject *
slot(Queries *self, PyObject *object, int which)
{
	PyObject   *kind = which == S_MODULE ? self->db_type : self->prepared_type,
			   *value;

	if ((PyObject *) Py_TYPE(object) == kind &&
		(value = *(PyObject **) ((char *) object + self->slots[which])) != NULL)
		return Py_NewRef(value);
	return PyObject_GetAttr(object, names[slot_names[which]]);
}

/*
 * The innermost entry frame, a new reference, where db._from_the_call would return it
 * (walking out from `frame`, the frame of db's method); else what db._from_the_call says
 * (its refusal).
 */
static PyObject *
the_call(Queries *self, PyObject *module)
{
	PyObject   *disposing = global(self->stopping, N_DISPOSING);
	PyFrameObject *frame;
	PyObject   *owner = NULL;

	if (disposing == NULL)
		return NULL;
	frame = disposing == Py_False ? PyEval_GetFrame() : NULL;
	Py_XINCREF(frame);
	while (frame != NULL)
	{
		PyCodeObject *code = PyFrame_GetCode(frame);
		PyObject   *key = PyLong_FromVoidPtr(code),
				   *found;

		Py_DECREF(code);
		if (key == NULL)
			break;
		found = PyDict_GetItemWithError(self->entries, key);
		if (found == NULL && !PyErr_Occurred() && owner == NULL)
			owner = PyDict_GetItemWithError(self->owners, key);
		Py_DECREF(key);
		if (PyErr_Occurred())
			break;
		if (found != NULL)
		{
			PyObject   *querying = PyList_GET_ITEM(self->querying, 0);

			if (owner == module && module == PyList_GET_ITEM(self->calling, 0) &&
				(!PyLong_Check(querying) || PyLong_AsVoidPtr(querying) != (void *) frame))
				return (PyObject *) frame;
			break;
		}
		Py_SETREF(frame, PyFrame_GetBack(frame));
	}
	Py_XDECREF(frame);
	if (PyErr_Occurred())
		return NULL;
	/* refused: db._from_the_call says why (and would return the same frame if not) */
	return PyObject_CallOneArg(self->from_the_call, module);
}

/*
 * Where `watchdog` is another than the one seen last, its stop byte and budgets kept: a
 * watchdog's `stop_set` and `budgets` are made with it and never replaced (its `stop` is
 * set with the byte, see watchdog.Watchdog._hold; tests/unit/test_runtime.py). Of another
 * kind, nothing is kept, and watched reads the attributes by name. 0, or -1 with the error
 * set.
 */
static int
seen(Queries *self, PyObject *watchdog)
{
	PyObject   *flag = PyObject_GetAttr(watchdog, names[N_STOP_SET]),
			   *budgets = flag == NULL ? NULL : PyObject_GetAttr(watchdog, names[N_BUDGETS]);

	if (budgets == NULL)
	{
		Py_CLEAR(flag);
		if (!PyErr_ExceptionMatches(PyExc_AttributeError))
			return -1;
		PyErr_Clear();			/* (a watchdog older than its byte: read by name) */
	}
	Py_CLEAR(self->stop_flag);
	Py_CLEAR(self->budgets);
	self->stop_byte = NULL;
	Py_XSETREF(self->watchdog, Py_NewRef(watchdog));
	if (flag != NULL && PyMemoryView_Check(flag) && PyList_CheckExact(budgets) &&
		PyMemoryView_GET_BUFFER(flag)->len == 1 && !PyMemoryView_GET_BUFFER(flag)->readonly)
	{
		self->stop_byte = PyMemoryView_GET_BUFFER(flag)->buf;
		self->stop_flag = flag;
		self->budgets = budgets;
		return 0;
	}
	Py_XDECREF(flag);
	Py_XDECREF(budgets);
	return 0;
}

/*
 * watchdog.guard() (`counting` 0), or the query counted for max_db_ops (1): 0, or -1 with
 * the error set
 */
static int
watched(Queries *self, int counting)
{
	PyObject   *watchdog = global(self->stopping, N_WATCHDOG),
			   *value;
	int			due;

	if (watchdog == NULL)
		return -1;
	if (watchdog == Py_None)
		return 0;
	Py_INCREF(watchdog);
	if (watchdog != self->watchdog && seen(self, watchdog) < 0)
		goto failed;
	if (self->stop_byte != NULL)
		due = counting ? PyList_GET_SIZE(self->budgets) > 0 : self->stop_byte[0] != 0;
	else
	{
		value = PyObject_GetAttr(watchdog, names[counting ? N_BUDGETS : N_STOP]);
		if (value == NULL)
			goto failed;
		due = counting ? PyObject_IsTrue(value) : value != Py_None;
		Py_DECREF(value);
		if (due < 0)
			goto failed;
	}
	if (due)
	{
		value = counting ? PyObject_CallMethodNoArgs(watchdog, names[N_COUNT])
			: PyObject_CallNoArgs(self->guard);
		if (value == NULL)
			goto failed;
		Py_DECREF(value);
	}
	Py_DECREF(watchdog);
	return 0;
failed:
	Py_DECREF(watchdog);
	return -1;
}

/* (query, type of each parameter): db._plan_key's */
static PyObject *
plan_key(PyObject *query, PyObject *params)
{
	PyObject   *fast = PySequence_Fast(params, "pyfuncs: a query's parameters");
	Py_ssize_t	count;
	PyObject   *key;

	if (fast == NULL)
		return NULL;
	count = PySequence_Fast_GET_SIZE(fast);
	key = PyTuple_New(count + 1);
	if (key != NULL)
	{
		PyTuple_SET_ITEM(key, 0, Py_NewRef(query));
		for (Py_ssize_t i = 0; i < count; i++)
			PyTuple_SET_ITEM(key, i + 1, Py_NewRef(Py_TYPE(PySequence_Fast_GET_ITEM(fast, i))));
	}
	Py_DECREF(fast);
	return key;
}

/*
 * Whether the columns of a result (`desc`, its description) have the types whose oids `kept`
 * lists, as coltypes() made it: read from the description, without the list of ints
 * coltypes() would make (with 16 clients a core, that list, its comparison and their code
 * were a twentieth of the memory a query of a routine's touches on top of PL/Python's own,
 * all of it cold at each backend's turn).
 */
static bool
same_types(TupleDesc desc, PyObject *kept)
{
	if (!PyList_CheckExact(kept) || PyList_GET_SIZE(kept) != desc->natts)
		return false;
	for (int i = 0; i < desc->natts; i++)
	{
		PyObject   *oid = PyList_GET_ITEM(kept, i);
		unsigned long value;

		if (!PyLong_CheckExact(oid))
			return false;
		value = PyLong_AsUnsignedLong(oid);
		if (value == (unsigned long) -1 && PyErr_Occurred())
		{
			PyErr_Clear();
			return false;
		}
		if (value != TupleDescAttr(desc, i)->atttypid)
			return false;
	}
	return true;
}

/* The result of `prepared`'s query, its columns converted (db._Prepared.rows) */
static PyObject *
converted(Queries *self, PyObject *prepared, PyObject *result)
{
	PyObject   *kept_types,
			   *fixes;
	int			same;

	if ((PyObject *) Py_TYPE(result) != self->results)
	{
		/* (learnt from the first result: its type has PL/Python's method coltypes) */
		PyObject   *method = PyObject_GetAttr((PyObject *) Py_TYPE(result), names[N_COLTYPES]);
		bool		plpython;

		if (method == NULL)
			goto failed;
		plpython = PyObject_TypeCheck(method, &PyMethodDescr_Type) &&
			Py_TYPE(result)->tp_basicsize == sizeof(PLyResultObject);
		Py_DECREF(method);
		if (!plpython)
		{
			/* (never: but then Python's work does it all) */
			Py_SETREF(result, PyObject_CallMethodOneArg(prepared, names[N_ROWS], result));
			return result;
		}
		Py_XSETREF(self->results, Py_NewRef((PyObject *) Py_TYPE(result)));
	}
	if (((PLyResultObject *) result)->tupdesc == NULL)
		return result;			/* a utility statement or a write without RETURNING */
	kept_types = slot(self, prepared, S_TYPES);
	fixes = slot(self, prepared, S_FIXES);
	same = kept_types == NULL || fixes == NULL ? -1
		: PyList_CheckExact(fixes) && PyList_GET_SIZE(fixes) == 0 &&
		same_types(((PLyResultObject *) result)->tupdesc, kept_types);
	Py_XDECREF(kept_types);
	Py_XDECREF(fixes);
	if (same < 0)
		goto failed;
	if (same)
		return result;
	Py_SETREF(result, PyObject_CallMethodOneArg(prepared, names[N_ROWS], result));
	return result;
failed:
	Py_DECREF(result);
	return NULL;
}

/* What of a result the caller takes (db._part): 0 all of it, 1 its first row, 2 that
 * row's first column (None for both without rows) */
static PyObject *
part(PyObject *result, long what)
{
	Py_ssize_t	count;
	PyObject   *row,
			   *value = Py_None;

	if (what == 0)
		return result;
	count = PyObject_Length(result);
	if (count <= 0)
	{
		Py_DECREF(result);
		return count < 0 ? NULL : Py_NewRef(Py_None);
	}
	row = PySequence_GetItem(result, 0);
	Py_DECREF(result);
	if (row == NULL || what == 1)
		return row;
	if (PyDict_CheckExact(row))
	{
		Py_ssize_t	at = 0;

		PyDict_Next(row, &at, NULL, &value);
		Py_INCREF(value);
	}
	else
	{
		PyObject   *values = PyMapping_Values(row);

		value = values == NULL ? NULL
			: Py_NewRef(PyList_GET_SIZE(values) ? PyList_GET_ITEM(values, 0) : Py_None);
		Py_XDECREF(values);
	}
	Py_DECREF(row);
	return value;
}

/*
 * Frames a routine's query leaves below Python's recursion limit. PL/Python converts a
 * query's parameters (and PostgreSQL's calls of functions inside it, their results) with
 * Python's C API, some of which checks the limit, and PL/Python does not check what it
 * gives back: an int's str() refused at the limit crashed the backend (round 79). So no
 * query of a routine's runs within this many frames of the limit: it fails with a
 * RecursionError, which a routine may catch.
 */
#define QUERY_HEADROOM 50

/* Whether a query may run this deep: 0, or -1 with a RecursionError (also db._guarded's) */
int
pyfuncs_query_headroom(void)
{
	if (PyThreadState_Get()->recursion_remaining >= QUERY_HEADROOM)
		return 0;
	PyErr_Format(PyExc_RecursionError, "pyfuncs: a routine's query %d frames or fewer from "
				 "Python's recursion limit: PL/Python needs them to convert its values; "
				 "query from a shallower frame", QUERY_HEADROOM);
	return -1;
}

static PyObject *
queries_run(PyObject *callable, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
	Queries    *self = (Queries *) callable;
	PyObject   *module = NULL,
			   *entry = NULL,
			   *query = NULL,
			   *params = NULL,
			   *key = NULL,
			   *prepared = NULL,
			   *plan = NULL,
			   *entry_id = NULL,
			   *outer = NULL,
			   *begun = NULL,
			   *ended = NULL,
			   *result = NULL,
			   *function;

	long		what;

	if (kwnames != NULL || PyVectorcall_NARGS(nargsf) != 4)
	{
		PyErr_SetString(PyExc_TypeError, "pyfuncs: run(db, query, params, what)");
		return NULL;
	}
	if (pyfuncs_query_headroom() < 0)
		return NULL;
	what = PyLong_AsLong(args[3]);
	if (what < 0 || what > 2)
	{
		if (!PyErr_Occurred())
			PyErr_SetString(PyExc_ValueError, "pyfuncs: what is 0, 1 or 2");
		return NULL;
	}
	if (watched(self, 0) < 0 || !(module = slot(self, args[0], S_MODULE)) ||
		!(entry = the_call(self, module)) || watched(self, 1) < 0)
		goto done;
	query = PyUnicode_CheckExact(args[1]) ? Py_NewRef(args[1])
		: PyObject_CallOneArg(self->text, args[1]);
	params = PyTuple_CheckExact(args[2]) ? Py_NewRef(args[2]) : PySequence_List(args[2]);
	if (query == NULL || params == NULL || !(key = plan_key(query, params)) ||
		!(entry_id = PyLong_FromVoidPtr(entry)))
		goto done;
	prepared = PyDict_GetItemWithError(self->plans, key);
	if (prepared != NULL)
		Py_INCREF(prepared);
	else
	{
		/* (a query of its own, as PostgreSQL runs any SQL preparing it) */
		PyObject   *plan_of,
				   *pair;

		if (PyErr_Occurred() || !(plan_of = PyObject_GetAttr(args[0], names[N_PLAN_OF])))
			goto done;
		pair = PyObject_CallFunctionObjArgs(self->guarded, entry_id, plan_of, query, params,
											NULL);
		Py_DECREF(plan_of);
		if (pair == NULL)
			goto done;
		if (!PyTuple_CheckExact(pair) || PyTuple_GET_SIZE(pair) != 2)
		{
			Py_DECREF(pair);
			PyErr_SetString(PyExc_SystemError, "pyfuncs: _plan gives (prepared, params)");
			goto done;
		}
		prepared = Py_NewRef(PyTuple_GET_ITEM(pair, 0));
		Py_SETREF(params, Py_NewRef(PyTuple_GET_ITEM(pair, 1)));
		Py_DECREF(pair);
	}
	if (!(plan = slot(self, prepared, S_PLAN)))
		goto done;
	/* a stop the watchdog held while Python ran above (the planning of a query not kept
	 * yet, the count: its bookkeeping, where a stop is held and raised later) is raised
	 * here, before the query (round 76 read that it let one query run) */
	if ((self->stop_byte == NULL || self->stop_byte[0]) && watched(self, 0) < 0)
		goto done;
	/* from here as db._run's try: the query, its errors told, then its end */
	outer = Py_NewRef(PyList_GET_ITEM(self->querying, 0));
	swap_in(self->querying, 0, Py_NewRef(entry_id));
	function = global(self->db, N_BEGIN);
	begun = function == NULL ? NULL : PyObject_CallNoArgs(function);
	if (begun == Py_None)
	{
		PyObject   *refusal = PyObject_CallNoArgs(self->may_not_run);

		if (refusal != NULL)
		{
			PyErr_SetObject((PyObject *) Py_TYPE(refusal), refusal);
			Py_DECREF(refusal);
		}
	}
	else if (begun != NULL)
	{
		PyObject   *call[2] = {plan, params};

		result = PyObject_Vectorcall(self->execute, call, 2, NULL);
	}
	if (result == NULL && PyErr_ExceptionMatches(self->spi_error))
	{
		/* its subtransaction, and what it changed, rolled back */
		PyObject   *kind,
				   *value,
				   *trace,
				   *told;

		PyErr_Fetch(&kind, &value, &trace);
		PyErr_NormalizeException(&kind, &value, &trace);
		if (trace != NULL)
			PyException_SetTraceback(value, trace);
		told = PyObject_CallOneArg(self->expired, value);
		if (told != NULL)
		{
			Py_DECREF(told);
			told = PyObject_CallOneArg(self->failed, value);
		}
		if (told != NULL)
		{
			Py_DECREF(told);
			PyErr_Restore(kind, value, trace);
		}
		else
		{
			Py_XDECREF(kind);
			Py_XDECREF(value);
			Py_XDECREF(trace);
		}
	}
	swap_in(self->querying, 0, outer);
	if (begun != NULL && begun != Py_None)
	{
		PyObject   *kind,
				   *value,
				   *trace;

		PyErr_Fetch(&kind, &value, &trace);
		function = global(self->db, N_END);
		ended = function == NULL ? NULL : PyObject_CallOneArg(function, begun);
		if (ended == NULL)
		{
			/* (its error replaces the query's, as a `finally` that raises does) */
			Py_XDECREF(kind);
			Py_XDECREF(value);
			Py_XDECREF(trace);
			Py_CLEAR(result);
		}
		else
			PyErr_Restore(kind, value, trace);
	}
	if (result != NULL && ended != NULL && ended != Py_None)
	{
		PyObject   *told = PyObject_CallOneArg(self->ended, ended);

		if (told == NULL)
			Py_CLEAR(result);
		Py_XDECREF(told);
	}
	if (result != NULL)
		result = converted(self, prepared, result);
	if (result != NULL)
		result = part(result, what);
done:
	Py_XDECREF(module);
	Py_XDECREF(entry);
	Py_XDECREF(query);
	Py_XDECREF(params);
	Py_XDECREF(key);
	Py_XDECREF(prepared);
	Py_XDECREF(plan);
	Py_XDECREF(entry_id);
	Py_XDECREF(begun);
	Py_XDECREF(ended);
	return result;
}

static PyTypeObject QueriesType = {
	PyVarObject_HEAD_INIT(NULL, 0)
	.tp_name = "pyfuncs.queries",
	.tp_basicsize = sizeof(Queries),
	.tp_dealloc = (destructor) queries_dealloc,
	.tp_vectorcall_offset = offsetof(Queries, vectorcall),
	.tp_call = PyVectorcall_Call,
	.tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
	.tp_traverse = (traverseproc) queries_traverse,
	.tp_clear = (inquiry) queries_clear,
};

/*
 * The runner of db's queries, from a dict of what it uses (queries_names: db's and the
 * watchdog's namespaces, then their functions and stores), or NULL with Python's error set.
 */
PyObject *
pyfuncs_queries_new(PyObject *config)
{
	static const char *const interned[NAMES] = {
		"WATCHDOG", "disposing", "begin", "end", "stop", "budgets", "count_db_op", "_module",
		"plan", "_plan", "coltypes", "rows", "types", "fixes", "stop_set",
	};
	Queries    *self;

	if (!PyDict_Check(config))
	{
		PyErr_SetString(PyExc_TypeError, "pyfuncs: a queries' config is a dict");
		return NULL;
	}
	if (names[0] == NULL)
	{
		if (PyType_Ready(&QueriesType) < 0)
			return NULL;
		for (int i = 0; i < NAMES; i++)
			if (!(names[i] = PyUnicode_InternFromString(interned[i])))
				return NULL;
	}
	self = PyObject_GC_New(Queries, &QueriesType);
	if (self == NULL)
		return NULL;
	self->vectorcall = queries_run;
	for (int i = 0; i < QUERIES_OBJECTS; i++)
		QUERIES_FIELD(self, i) = NULL;
	self->results = self->watchdog = self->stop_flag = self->budgets = NULL;
	self->stop_byte = NULL;
	for (int i = 0; i < QUERIES_OBJECTS; i++)
		if (!(QUERIES_FIELD(self, i) = item(config, queries_names[i])))
			goto bad;
	if (!PyDict_Check(self->db) || !PyDict_Check(self->stopping) ||
		!PyDict_CheckExact(self->owners) || !PyDict_CheckExact(self->entries) ||
		!PyDict_CheckExact(self->plans) || !PyList_CheckExact(self->calling) ||
		PyList_GET_SIZE(self->calling) != 1 || !PyList_CheckExact(self->querying) ||
		PyList_GET_SIZE(self->querying) != 1)
	{
		PyErr_SetString(PyExc_TypeError, "pyfuncs: a queries' config has the wrong kinds");
		goto bad;
	}
	for (int i = 0; i < 4; i++)
	{
		PyObject   *kind = i == S_MODULE ? self->db_type : self->prepared_type,
				   *found = PyType_Check(kind)
			? PyDict_GetItemWithError(((PyTypeObject *) kind)->tp_dict, names[slot_names[i]])
			: NULL;

		if (found == NULL || !Py_IS_TYPE(found, &PyMemberDescr_Type) ||
			((PyMemberDescrObject *) found)->d_member->type != T_OBJECT_EX)
		{
			if (!PyErr_Occurred())
				PyErr_Format(PyExc_TypeError, "pyfuncs: %U is not a slot of %R",
							 names[slot_names[i]], kind);
			goto bad;
		}
		self->slots[i] = ((PyMemberDescrObject *) found)->d_member->offset;
	}
	PyObject_GC_Track(self);
	return (PyObject *) self;
bad:
	Py_DECREF(self);
	return NULL;
}
