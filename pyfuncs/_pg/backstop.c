/*
 * pyfuncs' backstop: ends the session of a routine that cannot be stopped.
 *
 * The watchdog (watchdog.py) is Python code that Python runs between two bytecodes. One
 * call of C code that runs for long on data a routine built (comparing equal large objects
 * over a list of references, hashing a tuple nested by reference, keys that collide) runs
 * no bytecode, so no stop reaches it until it returns, which can be hours. This library,
 * loaded into the backend by the runtime (backstop.py), puts a handler of C in front of
 * Python's for SIGPROF, the watchdog's signal. It runs no Python and decides from what it
 * reads:
 *
 *   - a stop is due: PostgreSQL's own flags (a cancel, statement_timeout, a terminate)
 *     have been pending for GRACE, or the deadline of the innermost call under way with a
 *     timeout_ms (pyfuncs_backstop_clock[0], written by their entry functions) passed
 *     GRACE ago;
 *   - Python is stuck: the watchdog last ran (pyfuncs_backstop_clock[1]) GRACE ago;
 *   - the interrupted instruction is in Python's own code (libpython, its extension
 *     modules; or one of the C library's string functions, which hold no state, called from
 *     Python's code: comparing equal large objects spends nearly all its time in memcmp),
 *     and was found there at samples SUSTAIN apart with nothing in between that said
 *     otherwise.
 *
 * Then it ends the session with a FATAL error, the way PostgreSQL ends a session it
 * terminates (ProcessInterrupts): the transaction is aborted, locks and shared state are
 * released, the client gets the message, the process exits with status 1 and every other
 * session carries on (no crash recovery). Code of Python's own holds no lock and no state
 * of PostgreSQL's (it runs between PostgreSQL's calls into PL/Python). Anywhere else (the
 * rest of the C library, whose malloc may be half-way through changing its lists;
 * PostgreSQL itself, which stops its own queries) the handler does nothing but look again
 * a millisecond of CPU time later; nor while PostgreSQL holds interrupts off.
 *
 * It also contains crashes of Python's own code (pyfuncs_backstop_contain). A routine that
 * reaches a memory-safety bug of the interpreter (CPython has had a few in what routines
 * may use: deque.index in 3.11.2 compared an item it did not hold, which an __eq__ could
 * free) makes the backend fault, and a backend that dies of a signal makes PostgreSQL end
 * every session of the cluster and recover (it cannot know what the dying backend left
 * half-done in shared memory). A fault whose instruction is Python's code, or a jump from
 * Python's code to an address where no code is, or one of the string functions called from
 * Python's code, happens where PostgreSQL holds no state of its own half-changed: so the
 * handler ends the session with FATAL, as above, and the cluster carries on. A fault
 * anywhere else (PostgreSQL, the C library's allocator, other libraries), a second fault,
 * or one inside a critical section takes the default action, as without the handler. An
 * overflow of the main thread's stack is contained wherever it happens (overflow.py).
 */
#define _GNU_SOURCE				/* dl_iterate_phdr, REG_RIP */
#include "postgres.h"

#include <dlfcn.h>
#include <link.h>
#include <signal.h>
#include <sys/time.h>
#include <time.h>
#include <ucontext.h>

#include "access/xact.h"
#include "catalog/namespace.h"
#include "miscadmin.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/proc.h"
#include "utils/elog.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/timeout.h"
#include "utils/timestamp.h"

/* [0]: the deadline of the innermost call under way with a timeout_ms, [1]: when the
 * watchdog last completed a look, [2]: when it first raised a stop; in seconds of
 * CLOCK_MONOTONIC (Python's time.monotonic), 0 for none. Written by the runtime through
 * ctypes. */
double		pyfuncs_backstop_clock[3];

#define SUSTAIN 0.1				/* seconds the routine must be seen stuck for */
#define MAX_RANGES 64

typedef struct
{
	uintptr_t	low,
				high;
}			Range;

static double grace;
static double unwind;			/* after the watchdog first raised a stop: what it
								 * built may take seconds of C to free */
static char message[512];
static struct sigaction chained;	/* Python's handler */
static Range python_code[MAX_RANGES];	/* libpython, its extension modules */
static int	python_ranges;
static Range postgres_code[MAX_RANGES]; /* the postgres executable, PL/Python */
static int	postgres_ranges;
static double pg_stop_since;	/* since when a cancel or terminate has been pending */

/* the C library's string functions (their implementations, as the dynamic linker chose
 * them): the code from each one's start for STRING_CODE bytes, where the others follow.
 * They are leaves: where one was interrupted, the word at the top of the stack (x86-64) or
 * the link register (aarch64) is where it returns to, which must be Python's code (else it
 * was PostgreSQL's call, or one the check cannot read, and the sample does not count) */
#define STRING_CODE 2048
static Range string_code[MAX_RANGES];
static int	string_ranges;
static const char *const string_functions[] = {
	"memcmp", "bcmp", "memcpy", "memmove", "memset", "memchr", "memrchr", "strlen",
	"strnlen", "strchr", "strcmp", "strncmp", "wmemset", "wcslen", "wmemcmp", "wmemchr",
};
static double stuck_since;		/* the first sample that found the routine stuck */

/* for faults: every loaded object's code (where it is not, a jump went astray), the main
 * thread's stack (an overflow faults below its limit), the messages */
#define MAX_CODE 512
static Range all_code[MAX_CODE];
static int	all_ranges;
static uintptr_t stack_low,
			stack_high;
static char overflow_message[512];
static char crash_message[512];

static double
now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static uintptr_t
interrupted_at(void *context)
{
	ucontext_t *uc = (ucontext_t *) context;

#if defined(__x86_64__)
	return (uintptr_t) uc->uc_mcontext.gregs[REG_RIP];
#elif defined(__aarch64__)
	return (uintptr_t) uc->uc_mcontext.pc;
#else
	return 0;
#endif
}

/* where a leaf function interrupted at `context` returns to */
static uintptr_t
returns_to(void *context)
{
	ucontext_t *uc = (ucontext_t *) context;

#if defined(__x86_64__)
	return *(uintptr_t *) uc->uc_mcontext.gregs[REG_RSP];
#elif defined(__aarch64__)
	return (uintptr_t) uc->uc_mcontext.regs[30];
#else
	return 0;
#endif
}

static bool
within(const Range *range, int count, uintptr_t pc)
{
	for (int i = 0; i < count; i++)
		if (range[i].low <= pc && pc < range[i].high)
			return true;
	return false;
}

/* look again after a millisecond of CPU time (the watchdog's next look resets the timer) */
static void
sample_soon(void)
{
	struct itimerval soon = {{0, 1000}, {0, 1000}};

	setitimer(ITIMER_PROF, &soon, NULL);
}

static void ran_on_after_stop(double t);

static void
watch(void *context)
{
	double		t = now();
	double		due = 0;
	const char *why = NULL;
	double		deadline = pyfuncs_backstop_clock[0];
	uintptr_t	pc;

	ran_on_after_stop(t);
	if (CritSectionCount || InterruptHoldoffCount || QueryCancelHoldoffCount || proc_exit_inprogress)
	{
		stuck_since = 0;
		return;
	}
	if (InterruptPending && (ProcDiePending || QueryCancelPending))
	{
		/* (due no earlier than the watchdog's last look, unless it raised a stop since:
		 * a look that saw it pending raised it, and the stop is the same) */
		if (!pg_stop_since || (pg_stop_since < pyfuncs_backstop_clock[1]
							   && pyfuncs_backstop_clock[2] < pg_stop_since))
			pg_stop_since = t;
		due = pg_stop_since;
		why = ProcDiePending ? "terminated by pg_terminate_backend" : "canceled";
	}
	else
		pg_stop_since = 0;
	if (deadline > 0 && (!due || deadline < due))
	{
		due = deadline;
		why = "its timeout_ms passed";
	}
	if (!due || t - due < (t - pyfuncs_backstop_clock[2] < unwind ? unwind : grace)
		|| t - pyfuncs_backstop_clock[1] < grace)
	{
		stuck_since = 0;		/* nothing due, or Python runs: the watchdog stops it */
		return;
	}
	pc = interrupted_at(context);
	if (within(string_code, string_ranges, pc))
		pc = returns_to(context);
	if (within(postgres_code, postgres_ranges, pc))
	{
		stuck_since = 0;		/* not a loop of Python's: a query, an error on its way */
		return;
	}
	if (!within(python_code, python_ranges, pc) || !stuck_since || t - stuck_since < SUSTAIN)
	{
		if (!stuck_since && within(python_code, python_ranges, pc))
			stuck_since = t;
		sample_soon();			/* (in the C library, or not yet for long enough) */
		return;
	}
	/* on the signal stack (Python's handlers run there): PostgreSQL's depth checks on the
	 * way out are measured from here, as they are for a C stack overflow (overflow.py) */
	set_stack_base();
	ereport(FATAL,
			(errcode(ProcDiePending ? ERRCODE_ADMIN_SHUTDOWN : ERRCODE_QUERY_CANCELED),
			 errmsg("%s (%s %.0f ms before)", message, why, (t - due) * 1000),
			 errhint("A routine that spends that long in one call of C code (on data it "
					 "built) cannot be stopped any other way; see \"Stopping routines\" in "
					 "pyfuncs' README.")));
}

/* the handler ours was put in front of */
static void
chain(const struct sigaction *to, int signo, siginfo_t *info, void *context)
{
	if (to->sa_flags & SA_SIGINFO)
		to->sa_sigaction(signo, info, context);
	else if (to->sa_handler != SIG_IGN && to->sa_handler != SIG_DFL)
		to->sa_handler(signo);
}

static void
on_signal(int signo, siginfo_t *info, void *context)
{
	int			saved_errno = errno;

	watch(context);
	errno = saved_errno;
	chain(&chained, signo, info, context);
}

static void
add(Range *range, int *count, uintptr_t low, uintptr_t high)
{
	if (*count < (range == all_code ? MAX_CODE : MAX_RANGES))
	{
		range[*count].low = low;
		range[*count].high = high;
		(*count)++;
	}
}

static int
add_code(struct dl_phdr_info *info, size_t size, void *data)
{
	const char *name = info->dlpi_name ? info->dlpi_name : "";
	bool		python = strstr(name, "libpython3") || strstr(name, "/lib-dynload/") ||
		strstr(name, "libmpdec");
	bool		postgres = name[0] == '\0' || strstr(name, "plpython3");

	for (int i = 0; i < info->dlpi_phnum; i++)
	{
		const ElfW(Phdr) *segment = &info->dlpi_phdr[i];
		uintptr_t	low = info->dlpi_addr + segment->p_vaddr;

		if (segment->p_type != PT_LOAD || !(segment->p_flags & PF_X))
			continue;
		add(all_code, &all_ranges, low, low + segment->p_memsz);
		if (!python && !postgres)
			continue;
		if (python)
			add(python_code, &python_ranges, low, low + segment->p_memsz);
		else
			add(postgres_code, &postgres_ranges, low, low + segment->p_memsz);
	}
	return 0;
}

/*
 * Called by the runtime once per backend, after the watchdog installed Python's handler
 * for SIGPROF (and again after a routine imported an extension module of Python's, to
 * find its code). 0 on success.
 */
int
pyfuncs_backstop_install(double grace_seconds, double unwind_seconds, const char *text)
{
	struct sigaction action;

	python_ranges = postgres_ranges = string_ranges = all_ranges = 0;
	dl_iterate_phdr(add_code, NULL);
	for (size_t i = 0; i < lengthof(string_functions); i++)
	{
		void	   *code = dlsym(RTLD_DEFAULT, string_functions[i]);

		if (code)
			add(string_code, &string_ranges, (uintptr_t) code, (uintptr_t) code + STRING_CODE);
	}
	if (python_ranges == 0 || postgres_ranges == 0)
		return -1;
	grace = grace_seconds;
	unwind = unwind_seconds;
	strlcpy(message, text, sizeof(message));
	if (chained.sa_sigaction || chained.sa_handler)
		return 0;				/* installed already */
	if (sigaction(SIGPROF, NULL, &chained) != 0)
		return -1;
	action = chained;
	action.sa_sigaction = on_signal;
	action.sa_flags = chained.sa_flags | SA_SIGINFO;
	if (sigaction(SIGPROF, &action, NULL) != 0)
		return -1;
	return 0;
}

/* whether a fault at `context` is Python's own (see the top of this file) */
static bool
python_fault(void *context)
{
	uintptr_t	pc = interrupted_at(context);

	if (within(python_code, python_ranges, pc))
		return true;
	/* a string function's, or a jump to where no code is: from where it was called (a jump
	 * through a pointer pushed its return address, and was the last thing done) */
	if (within(string_code, string_ranges, pc) || (pc && !within(all_code, all_ranges, pc)))
		return within(python_code, python_ranges, returns_to(context));
	return false;
}

static void
on_fault(int signo, siginfo_t *info, void *context)
{
	static volatile sig_atomic_t faulted;
	uintptr_t	address = (uintptr_t) info->si_addr;
	bool		overflow = signo == SIGSEGV && stack_low <= address && address < stack_high;

	/* (the handler was reset to the default action as it ran: SA_RESETHAND) */
	if (faulted || CritSectionCount || proc_exit_inprogress || !(overflow || python_fault(context)))
		return;					/* the instruction faults again: the default action */
	faulted = 1;
	/* on the signal stack: PostgreSQL's depth checks on the way out are measured from here */
	set_stack_base();
	if (overflow)
		ereport(FATAL,
				(errcode(ERRCODE_STATEMENT_TOO_COMPLEX),
				 errmsg("%s", overflow_message)));
	ereport(FATAL,
			(errcode(ERRCODE_INTERNAL_ERROR),
			 errmsg("%s (%s)", crash_message,
					signo == SIGSEGV ? "SIGSEGV" : signo == SIGBUS ? "SIGBUS" : "SIGILL"),
			 errhint("The routine reached a bug of the Python interpreter; see \"Security "
					 "model, honestly\" in pyfuncs' README.")));
}

/*
 * Called by the runtime once per backend, after pyfuncs_backstop_install and after the
 * alternate signal stack is in place (overflow.py): the handler for faults, in place of
 * overflow.py's. `low`..`high` is where an overflow of the main thread's stack faults.
 * 0 on success.
 */
int
pyfuncs_backstop_contain(uintptr_t low, uintptr_t high, const char *overflow, const char *crash)
{
	struct sigaction action;
	const int	signals[] = {SIGSEGV, SIGBUS, SIGILL};

	if (all_ranges == 0)
		return -1;
	stack_low = low;
	stack_high = high;
	strlcpy(overflow_message, overflow, sizeof(overflow_message));
	strlcpy(crash_message, crash, sizeof(crash_message));
	memset(&action, 0, sizeof(action));
	action.sa_sigaction = on_fault;
	action.sa_flags = SA_SIGINFO | SA_ONSTACK | SA_RESETHAND;
	sigemptyset(&action.sa_mask);
	for (size_t i = 0; i < lengthof(signals); i++)
		if (sigaction(signals[i], &action, NULL) != 0)
			return -1;
	return 0;
}


/*
 * The profile function of an import window (classes.py): while the import system runs a
 * module's code, the flags that keep routines from defining metaclasses and from changing
 * shared classes are off, and code of a routine's must not run with them off (a finalizer
 * something the import does sets off). This sees every call and return of Python code in
 * the window, as sys.setprofile's hook would, without running Python for each: when a frame
 * of a routine's code (its code's id is a key of `codes`, watchdog.ROUTINE_CODE) is entered
 * with no other running, it calls `closing`, and `opening` when the last one returns. The
 * few functions of Python's C API it needs are given to it by address (so the library
 * links against nothing of Python's); Python calls it with the GIL held.
 */
typedef struct _object PyObject;
typedef PyObject *(*GetCode) (void *frame);
typedef PyObject *(*FromPointer) (void *pointer);
typedef int (*Contains) (PyObject *dict, PyObject *key);
typedef PyObject *(*CallNoArgs) (PyObject *callable);
typedef void (*DecRef) (PyObject *object);

#define PYTRACE_CALL 0
#define PYTRACE_RETURN 3

static GetCode get_code;
static FromPointer from_pointer;
static Contains contains;
static CallNoArgs call;
static DecRef decref;
static PyObject *codes;
static PyObject *closing;
static PyObject *opening;
static long routine_frames;		/* frames of a routine's code running in the window */

/*
 * Before a window opens: Python's functions (PyFrame_GetCode, PyLong_FromVoidPtr,
 * PyDict_Contains, PyObject_CallNoArgs, Py_DecRef), the dict of routine code and the two
 * callables, which the caller keeps alive while the window is open.
 */
void
pyfuncs_window_open(GetCode a, FromPointer b, Contains c, CallNoArgs d, DecRef e,
					PyObject *routine_code, PyObject *on_close, PyObject *on_open)
{
	get_code = a;
	from_pointer = b;
	contains = c;
	call = d;
	decref = e;
	codes = routine_code;
	closing = on_close;
	opening = on_open;
	routine_frames = 0;
}

/* A Py_tracefunc, for PyEval_SetProfile: 0, or -1 with Python's error set. */
int
pyfuncs_window_watch(PyObject *unused, void *frame, int what, PyObject *arg)
{
	PyObject   *code,
			   *key,
			   *result;
	int			found;

	if (what != PYTRACE_CALL && (what != PYTRACE_RETURN || routine_frames == 0))
		return 0;
	code = get_code(frame);
	key = from_pointer(code);
	decref(code);
	if (key == NULL)
		return -1;
	found = contains(codes, key);
	decref(key);
	if (found <= 0)
		return found;
	if (what == PYTRACE_CALL ? routine_frames++ == 0 : --routine_frames == 0)
	{
		result = call(what == PYTRACE_CALL ? closing : opening);
		if (result == NULL)
		{
			/* the frame does not run (its call fails): the next one closes the window */
			if (what == PYTRACE_CALL)
				routine_frames = 0;
			return -1;
		}
		decref(result);
	}
	return 0;
}

/*
 * Finalizers apart from the call under way. An object is finalized (a suspended
 * generator closed, and with it the object it delegates to; a `__del__` run; a file
 * object closed) where its last reference goes, which can be in another role's call: a
 * cache every call shares drops a routine's object there, or the collector runs there.
 * What runs then, C's and the standard library's code on objects the routine chose, ran
 * in that call's context (a red team's read and raised the flags of the other call's
 * decimal context). So every type's finalizer (tp_finalize) is replaced by one of these,
 * which runs the type's own in a context of its own: an empty contextvars.Context (where
 * decimal's current context is a fresh default one) and no exception being handled, and
 * gives the call its own back after. One per distinct finalizer function, as a
 * tp_finalize is given only the object; a class made later (pyfuncs_type_new), and one
 * whose `__del__` or bases change (pyfuncs_type_setattro), gets one as it is made.
 */
typedef long PySize;			/* Py_ssize_t */
typedef void (*Finalizer) (PyObject *self);
typedef struct
{
	PyObject   *(*context_new) (void);
	int			(*context_enter) (PyObject *context);
	int			(*context_exit) (PyObject *context);
	PyObject   *(*get_handled) (void);
	void		(*set_handled) (PyObject *exception);
	void		(*fetch) (PyObject **type, PyObject **value, PyObject **traceback);
	void		(*restore) (PyObject *type, PyObject *value, PyObject *traceback);
	PySize		(*list_size) (PyObject *list);
	PyObject   *(*list_item) (PyObject *list, PySize i);
	PyObject   *(*call_one) (PyObject *callable, PyObject *argument);
	int			(*same_as) (PyObject *text, const char *ascii);
	unsigned long (*type_flags) (PyObject *type);
	PyObject   *(*get_attr) (PyObject *object, const char *name);
	void		(*clear_error) (void);
	void		(*decref) (PyObject *object);
} Api;

#define TYPE_SUBCLASS (1UL << 31)	/* Py_TPFLAGS_TYPE_SUBCLASS: the object is a class */

#define MAX_FINALIZERS 32
static Api	api;
static PySize finalize_at = -1;	/* tp_finalize's word in a type object */
static PyObject *subclasses;	/* type.__subclasses__ */
static Finalizer finalizers[MAX_FINALIZERS];	/* the types' own */
static int	finalizer_count;

/* generator, coroutine, async generator: the attribute that says what each delegates to */
static PyObject *suspendable[3];
static const char *const delegate_names[3] = {"gi_yieldfrom", "cr_await", "ag_await"};
static PyObject *none;
static PyObject *kept_by;		/* pyfuncs_generators_kept's */
static PyObject *truth;

/*
 * Whether closing generator `self` would look up and call a `close` of what its innermost
 * delegate is, not a generator (C closes anything but a generator a `yield from` delegates
 * to by the `close` it finds on it, which may be a property, run as it is looked up): a
 * generator of the standard library's suspended in `yield from` an object of a routine's
 * (KeysView's iterator, heapq.merge) closed it by a `close` the routine had set on the
 * object, a C function that ran whatever the routine chose (red teams: in another role's
 * call, with its decimal context; later, sorting for as long as it liked there). Such a
 * generator is not finalized: its frame is let go of without its `finally` blocks. (A
 * routine's own generators delegate only to generators: sandbox.delegate.) On an error,
 * the same.
 */
static bool
closes_elsewhere(PyObject *self)
{
	PyObject   *at = self,
			   *held = NULL,
			   *next;
	PyObject   *kind;
	int			i;
	bool		elsewhere = false;

	for (;;)
	{
		kind = ((PyObject **) at)[1];	/* its ob_type, after ob_refcnt */
		for (i = 0; i < 3 && suspendable[i] != kind; i++)
			;
		if (i == 3)
		{
			elsewhere = at != self;
			break;
		}
		if (kept_by != NULL)	/* one whose frames must not run here? */
		{
			next = api.call_one(kept_by, at);
			if (next != NULL)
				api.decref(next);
			else
				api.clear_error();
			if (next != truth)	/* (on an error, too) */
			{
				elsewhere = true;
				break;
			}
		}
		next = api.get_attr(at, delegate_names[i]);
		if (next == NULL)
		{
			api.clear_error();
			elsewhere = true;
			break;
		}
		if (held != NULL)
			api.decref(held);
		held = at = next;
		if (next == none)
			break;
	}
	if (held != NULL)
		api.decref(held);
	return elsewhere;
}

static void
apart(Finalizer finalize, PyObject *self)
{
	PyObject   *type,
			   *value,
			   *traceback,
			   *context,
			   *handled;

	api.fetch(&type, &value, &traceback);
	if (closes_elsewhere(self))
	{
		api.restore(type, value, traceback);
		return;
	}
	context = api.context_new();
	/* (without memory for a context, the object goes unfinalized) */
	if (context != NULL && api.context_enter(context) == 0)
	{
		handled = api.get_handled();
		api.set_handled(NULL);
		finalize(self);
		api.set_handled(handled);
		if (handled != NULL)
			api.decref(handled);
		api.context_exit(context);
	}
	if (context != NULL)
		api.decref(context);
	api.restore(type, value, traceback);
}

/* (no more distinct finalizers than CPython has: past them, an object is not finalized) */
static void
unfinalized(PyObject *self)
{
}

#define APART(i) static void apart_##i(PyObject *self) { apart(finalizers[i], self); }
APART(0) APART(1) APART(2) APART(3) APART(4) APART(5) APART(6) APART(7)
APART(8) APART(9) APART(10) APART(11) APART(12) APART(13) APART(14) APART(15)
APART(16) APART(17) APART(18) APART(19) APART(20) APART(21) APART(22) APART(23)
APART(24) APART(25) APART(26) APART(27) APART(28) APART(29) APART(30) APART(31)

static const Finalizer aparts[MAX_FINALIZERS] = {
	apart_0, apart_1, apart_2, apart_3, apart_4, apart_5, apart_6, apart_7,
	apart_8, apart_9, apart_10, apart_11, apart_12, apart_13, apart_14, apart_15,
	apart_16, apart_17, apart_18, apart_19, apart_20, apart_21, apart_22, apart_23,
	apart_24, apart_25, apart_26, apart_27, apart_28, apart_29, apart_30, apart_31,
};

static void
keep_apart(PyObject *type)
{
	Finalizer  *slot;
	int			i;

	if (finalize_at < 0)
		return;
	slot = (Finalizer *) ((void **) type + finalize_at);
	if (*slot == NULL || *slot == unfinalized)
		return;
	for (i = 0; i < finalizer_count; i++)
		if (*slot == aparts[i])
			return;
	for (i = 0; i < finalizer_count && finalizers[i] != *slot; i++)
		;
	if (i == MAX_FINALIZERS)
	{
		*slot = unfinalized;
		return;
	}
	if (i == finalizer_count)
		finalizers[finalizer_count++] = *slot;
	*slot = aparts[i];
}

/* type and every class derived from it: 0, or -1 with Python's error set */
static int
keep_apart_below(PyObject *type)
{
	PyObject   *below;
	PySize		count,
				i;

	keep_apart(type);
	below = api.call_one(subclasses, type);
	if (below == NULL)
		return -1;
	count = api.list_size(below);
	for (i = 0; i < count; i++)
		if (keep_apart_below(api.list_item(below, i)) < 0)
		{
			api.decref(below);
			return -1;
		}
	api.decref(below);
	return 0;
}

/*
 * The check of every class made and of every attribute set on a class (classes.py): type's
 * own tp_new and tp_setattro are replaced by these two, which first call Python's `check`
 * with what the class is made of, or with the class, the name and the value, and go on only
 * if it returns. Every way of making a class or setting a class attribute in Python goes
 * through type's two slots (a class statement, `type(name, bases, namespace)`, a
 * metaclass's `__new__` through `type.__new__`, `setattr`), and a class made after this
 * inherits them. As above, Python's functions come by address.
 */
typedef PyObject *(*NewFunc) (PyObject *meta, PyObject *args, PyObject *kwds);
typedef int (*SetAttr) (PyObject *type, PyObject *name, PyObject *value);
typedef PyObject *(*CallArgs) (PyObject *callable,...);

static NewFunc made_by;
static SetAttr set_by;
static CallArgs call_with;
static PyObject *check_made;
static PyObject *check_set;

void
pyfuncs_classes_checked(NewFunc new_original, SetAttr set_original, CallArgs a, DecRef b,
						PyObject *on_make, PyObject *on_set)
{
	made_by = new_original;
	set_by = set_original;
	call_with = a;
	decref = b;
	check_made = on_make;
	check_set = on_set;
}

PyObject   *
pyfuncs_type_new(PyObject *meta, PyObject *args, PyObject *kwds)
{
	PyObject   *checked = call_with(check_made, args, NULL),
			   *made;

	if (checked == NULL)
		return NULL;
	decref(checked);
	made = made_by(meta, args, kwds);
	/* (a metaclass's __new__, which type's calls for a derived metaclass, returns anything) */
	if (made != NULL && finalize_at >= 0	/* ([1]: its ob_type, after ob_refcnt) */
		&& api.type_flags(((PyObject **) made)[1]) & TYPE_SUBCLASS)
		keep_apart(made);
	return made;
}

int
pyfuncs_type_setattro(PyObject *type, PyObject *name, PyObject *value)
{
	PyObject   *checked;

	if (value != NULL)
	{
		checked = call_with(check_set, type, name, value, NULL);
		if (checked == NULL)
			return -1;
		decref(checked);
	}
	if (set_by(type, name, value) < 0)
		return -1;
	/* both make type choose the class's finalizer (and its subclasses') anew */
	if (finalize_at >= 0 && (api.same_as(name, "__del__") == 0 || api.same_as(name, "__bases__") == 0))
		return keep_apart_below(type);
	return 0;
}

/*
 * Python's functions (Api's, in its order), tp_finalize's word in a type object,
 * type.__subclasses__ (kept alive by the caller), the class whose every subclass to go
 * through (object), and the generator, coroutine and async generator types and None:
 * 0, or -1 with Python's error set. Again after an extension module was loaded (its
 * classes are made without type's tp_new).
 *
 * (One library serves every database of the cluster, whose runtimes, stored in each, may
 * be older than it: a function whose arguments change gets a new name, which an older
 * runtime does not find. One a commit older than this called it by its old name with
 * fewer arguments, and crashed its backend.)
 */
int
pyfuncs_finalizers_kept_apart(const Api *functions, PySize at, PyObject *subclasses_of,
							  PyObject *root, PyObject *const *kinds)
{
	int			i;

	for (i = 0; i < 3; i++)
		suspendable[i] = kinds[i];
	none = kinds[3];
	api = *functions;
	subclasses = subclasses_of;
	finalize_at = at;
	return keep_apart_below(root);
}

/*
 * Weak references' callbacks, which Python runs as the object they refer to is freed,
 * wherever that is: not a finalizer (above), so nothing kept them apart. A red team's
 * routine gave a WeakValueDictionary of the standard library's (a ZoneInfo subclass's
 * cache) a key whose hash ran for as long as it liked, and its callback, removing the
 * entry, hashed it in another role's call as the collector freed the value there. So the
 * weak reference type's tp_new (weakref.ref(obj, callback), and every subclass's through
 * it) first has Python's `own` (watchdog.owned_callback) replace a callback by one that
 * runs it only in a call of the routine that made the reference, and keeps it for that
 * routine's next call elsewhere. Python's functions by address, as above.
 */
typedef struct
{
	PySize		(*tuple_size) (PyObject *tuple);
	PyObject   *(*tuple_item) (PyObject *tuple, PySize i);
	PyObject   *(*tuple_pack) (PySize n,...);
	PyObject   *(*call_one) (PyObject *callable, PyObject *argument);
	void		(*decref) (PyObject *object);
} RefApi;

static RefApi refs;
static NewFunc ref_made_by;
static PyObject *own;
static PyObject *ref_none;

PyObject   *
pyfuncs_weakref_new(PyObject *type, PyObject *args, PyObject *kwds)
{
	PyObject   *callback,
			   *owned,
			   *changed,
			   *made;

	if (refs.tuple_size(args) != 2 || (callback = refs.tuple_item(args, 1)) == ref_none)
		return ref_made_by(type, args, kwds);
	owned = refs.call_one(own, callback);
	if (owned == NULL)
		return NULL;
	changed = refs.tuple_pack(2, refs.tuple_item(args, 0), owned);
	refs.decref(owned);
	if (changed == NULL)
		return NULL;
	made = ref_made_by(type, changed, kwds);
	refs.decref(changed);
	return made;
}

/* Python's functions (RefApi's, in its order), the type's own tp_new, `own` and None, which
 * the caller keeps alive */
void
pyfuncs_weakrefs_owned(const RefApi *functions, NewFunc original, PyObject *owning,
					   PyObject *none_object)
{
	refs = *functions;
	ref_made_by = original;
	own = owning;
	ref_none = none_object;
}

/*
 * date, datetime and time from a pickle's state (`date(b"\x00\x00\x01\x01")`, the form copy
 * and pickle call them with): C checks the month only (a time's hour), so a routine made a
 * date of year 0, whose weekday is -1, and ctime() read a pointer before its table of day
 * names and ran strlen over what it pointed to (round 82). The three types' tp_new are
 * replaced by these, which, when given one or two arguments (the form a state comes in),
 * hand what was made to Python's `check`, which returns it or raises if a field is out of
 * range. Python's functions (RefApi's) by address, as above.
 */
static RefApi moments;
static NewFunc moment_made_by[3];
static PyObject *moment_check;

static PyObject *
moment_new(int kind, PyObject *type, PyObject *args, PyObject *kwds)
{
	PyObject   *made = moment_made_by[kind] (type, args, kwds),
			   *checked;
	PySize		given;

	if (made == NULL)
		return NULL;
	given = moments.tuple_size(args);
	if (given < 1 || given > 2)
		return made;
	checked = moments.call_one(moment_check, made);
	moments.decref(made);
	return checked;
}

PyObject   *
pyfuncs_date_new(PyObject *type, PyObject *args, PyObject *kwds)
{
	return moment_new(0, type, args, kwds);
}

PyObject   *
pyfuncs_datetime_new(PyObject *type, PyObject *args, PyObject *kwds)
{
	return moment_new(1, type, args, kwds);
}

PyObject   *
pyfuncs_time_new(PyObject *type, PyObject *args, PyObject *kwds)
{
	return moment_new(2, type, args, kwds);
}

/* Python's functions (RefApi's), the three types' own tp_new (date, datetime, time) and
 * `check`, which the caller keeps alive */
void
pyfuncs_moments_checked(const RefApi *functions, const NewFunc *originals, PyObject *check)
{
	int			i;

	moments = *functions;
	for (i = 0; i < 3; i++)
		moment_made_by[i] = originals[i];
	moment_check = check;
}

/*
 * Decimal's comparisons take the current decimal context without holding it, and, with an
 * operand that is a Rational (a Fraction, a routine's subclass of one), read its numerator
 * and denominator, which may run code of the routine's, before they raise flags in the
 * context: code that made another context current there (closing a generator suspended
 * inside a localcontext()) freed the context, and the comparison wrote into freed memory
 * (round 83, gh-148382). Decimal's tp_richcompare is replaced by this, which holds the
 * current context (Python's `current`, decimal.getcontext) around the comparison when the
 * other operand is of a kind other than `plain` (Decimal, int, bool, float: no code of a
 * routine's runs while they are compared).
 */
typedef PyObject *(*RichCompare) (PyObject *a, PyObject *b, int op);

typedef struct
{
	PyObject   *(*call_no_args) (PyObject *callable);
	void		(*decref) (PyObject *object);
} HoldApi;

static HoldApi holding;
static RichCompare compared_by;
static PyObject *current_context;
static PyObject *plain_operands[4];

PyObject   *
pyfuncs_decimal_compare(PyObject *a, PyObject *b, int op)
{
	PyObject   *kind = ((PyObject **) b)[1],	/* ob_type, after ob_refcnt */
			   *held,
			   *result;
	int			i;

	for (i = 0; i < 4; i++)
		if (kind == plain_operands[i])
			return compared_by(a, b, op);
	held = holding.call_no_args(current_context);
	if (held == NULL)
		return NULL;
	result = compared_by(a, b, op);
	holding.decref(held);
	return result;
}

/* Python's functions (HoldApi's), Decimal's own tp_richcompare, `current` and the four
 * plain kinds, which the caller keeps alive */
void
pyfuncs_decimal_contexts_held(const HoldApi *functions, RichCompare original,
							  PyObject *current, PyObject *const *plain)
{
	int			i;

	holding = *functions;
	compared_by = original;
	current_context = current;
	for (i = 0; i < 4; i++)
		plain_operands[i] = plain[i];
}

/*
 * Generators whose frames may run as they are finalized: before each generator of the
 * chain pyfuncs_finalizers_kept_apart's closes_elsewhere walks, `may_run(generator)` is
 * asked, and a generator for which it does not return True (`true_object`) is not
 * finalized. Round thirty-eight: a suspended generator of the standard library's (a
 * WeakValueDictionary's items(), inside `with _IterationGuard(self)`), finalized by the
 * collector in another role's call, committed the dictionary's pending removals there,
 * hashing a routine's key for as long as it liked. A routine's own generators refuse to
 * run outside its calls; the runtime's must run (they close a cursor, keep an orphan).
 * Both kept alive by the caller.
 */
void
pyfuncs_generators_kept(PyObject *may_run, PyObject *true_object)
{
	truth = true_object;
	kept_by = may_run;
}

/*
 * Set `bits` in the flags word, byte `at` of the type object, of the `count` classes at
 * `types` (classes.share: the ~700 classes every call shares are made immutable as the
 * runtime starts, 0.6 ms through a ctypes object each). The caller holds the classes and
 * the GIL.
 */
void
pyfuncs_flags_set(const uintptr_t *types, long count, long at, unsigned long bits)
{
	for (long i = 0; i < count; i++)
		*(unsigned long *) (types[i] + at) |= bits;
}

/*
 * The guards around every query of a routine's (identity.py, deadline.py) as Python
 * functions written in C: each query made five foreign calls through ctypes and read
 * PostgreSQL's variables through ctypes objects, several microseconds of a round trip's
 * CPU with the caches as a round trip leaves them. Same steps, same order as Python's:
 *
 * enter(): the role and security context now; where the call has not opened its level of
 * settings yet (`settings`, identity.SETTINGS: [level, the call's identity]), the
 * identity in full (role, context, search_path and claims as bytes or None) is made
 * first, then the level opened and both kept; then PostgreSQL is told to refuse changes
 * of identity (the context's restricted bits). Returns what leave needs.
 * leave(entered): the role and context as they were; what of the identity differs from
 * the call's ("role", "search_path", "request.jwt.claims": `names`), or None.
 * lend(): the runtime's timer set to go off at the deadline of the innermost call under way
 * with a timeout_ms (pyfuncs_backstop_clock[0]), if there is one, unless a query around
 * this one set it to an earlier one; whether give_back must be called after the query.
 * give_back(): a cancel the timer left pending as the query finished, too late for it,
 * taken back, and whether it went off forgotten (deadline.expired asks before); the timer
 * set again to the deadline of the query around this one, or off after the outermost.
 * lent(): how many queries are under way with the timer lent.
 * begin(): lend, then enter, in one call (each query of a routine's, db.py): what enter
 * returns, or None where the query may not run (lend's None).
 * end(entered): give_back (where begin lent), then leave: None, or what leave named, or
 * what give_back told (True, or 2).
 * undo(level): the settings of a call's level undone (AtEOXact_GUC, not committing).
 *
 * Python's functions by address, as above; run with the GIL held, as Python functions,
 * so no stop of the watchdog's lands between their steps.
 */
typedef struct
{
	const char *name;
	PyObject   *(*function) (PyObject *self, PyObject *argument);
	int			flags;
	const char *doc;
}			MethodDef;					/* PyMethodDef */

#define METH_NOARGS 0x0004
#define METH_O 0x0008

typedef struct
{
	PyObject   *(*tuple_pack) (PySize n,...);
	PyObject   *(*tuple_item) (PyObject *tuple, PySize i);
	PyObject   *(*list_item) (PyObject *list, PySize i);
	int			(*list_set) (PyObject *list, PySize i, PyObject *item);
	PyObject   *(*from_unsigned) (unsigned long value);
	unsigned long (*as_unsigned) (PyObject *number);
	PyObject   *(*from_long) (long value);
	long		(*as_long) (PyObject *number);
	PyObject   *(*from_text) (const char *text);
	char	   *(*text_of) (PyObject *bytes);
	int			(*is_true) (PyObject *object);
	PyObject   *(*error) (void);
	PyObject   *(*function_new) (MethodDef *definition, PyObject *self, PyObject *module);
	void		(*incref) (PyObject *object);
	void		(*decref) (PyObject *object);
}			GuardApi;

static GuardApi py;
static PyObject *settings;
static PyObject *objects[6];	/* None, True, False, then leave's three names */
static char **claims_kept;		/* the claims' storage, or NULL: read by name */
static int	timer = -1;

/* (deeper than PL/Python's recursion limit lets routines call each other through SQL) */
#define MAX_LENT 1024
static long lent;				/* queries under way since the timer was set */
static double lent_at;			/* when the last query was lent, until it is entered (0) */
static double deadlines[MAX_LENT];	/* the deadline armed for each (0: none), outermost first */
static TimestampTz statement_due[MAX_LENT];	/* statement_timeout's, as each began (0: none) */

/*
 * A routine's query that catches its cancel (a PL/pgSQL handler for query_canceled in a DO
 * block it runs) runs on, as in PostgreSQL, and its call stops only as it returns: a query
 * looping so ran for as long as it liked past the call's timeout_ms and statement_timeout.
 * A second timer (`killer`), set for each such query to GRACE after the first of those two
 * stops and every GRACE from then, ends the session where the query still runs and has
 * seen its stop (ran_on), as pg_terminate_backend does (PostgreSQL acts on it at its next
 * interrupt check, which no handler can catch), and the error the client gets says why
 * (explain). `ends[i]`: when query i's first goes off (0: never), in seconds of
 * CLOCK_MONOTONIC.
 */
static int	killer = -1;
static double ends[MAX_LENT];
static volatile sig_atomic_t killed;	/* 1: after a deadline, 2: after a cancel request, 3:
										 * a stop not seen for UNWIND */
static emit_log_hook_type prior_emit_log_hook;

/*
 * A cancel request (SIGINT: pg_cancel_backend, a client's cancel) has no time known ahead:
 * a handler in front of PostgreSQL's notes when one came while a routine's query was under
 * way, and how many were (0: none, or that query has returned since), and sets a POSIX
 * timer of the backend's own to send SIGPROF (the backstop's handler, watch) GRACE later.
 */
static volatile double cancelled_at;
static volatile long cancelled_depth;
static timer_t cancel_timer;
static bool cancel_timer_made;
static struct sigaction chained_cancel;	/* PostgreSQL's StatementCancelHandler */

/*
 * The subtransaction under way as each query of a routine's began (enter to leave),
 * innermost last. PL/Python catches an error its query raises in a subtransaction it begins
 * for the query, which comes later; an abort of one of these (or of the transaction) while
 * the query is under way means an error went through the interpreter's frames, which
 * PL/Python does not guard against everywhere and which leaves the interpreter corrupt
 * (red teams found three ways; each is closed, this is the net under them): the session
 * ends before another call runs in it.
 */
static SubTransactionId began_in[MAX_LENT];
/*
 * And the one PL/Python began for it, in it (0: none yet). Each query of a routine's is one
 * PL/Python operation, which begins one subtransaction: a second one begun in began_in, or
 * began_in ending, while the query is under way means code inside the query ended the
 * query's own (a red team's, through PL/Python's raw savepoint object, then began one that
 * PL/Python took for the query's, which ended in the subtransaction it began in).
 */
static SubTransactionId its_own[MAX_LENT];
/*
 * Whether each query's own subtransaction has aborted: the query ended with an error (a stop
 * it saw late, as it returned) and is on its way out through PL/Python to the runtime, which
 * notes the stop; it does not run on. (Code inside a query that ended the query's own, then
 * ran on, began a second subtransaction there: that ends the session, above.)
 */
static bool failed[MAX_LENT];
static unsigned long outermost;	/* the outermost query's number (by enter's count of them) */
static double outermost_began;	/* and when it began */
static Size error_quiet;		/* and ErrorContext's size then (no error under way) */

/*
 * A query seen running on past its stop ends the session when it is seen running on again
 * CONFIRM later (looks come every CONFIRM from the first), the same outermost query still
 * under way: PostgreSQL takes a stop a query saw late (the cancel is no longer pending) a few
 * hundred microseconds before the error it raises aborts the query's subtransaction
 * (`failed`), and a look in between is not a query that caught its stop. One found HELD
 * ends the session when found so again UNWIND later (whatever the looks between found): C
 * code that checks for no interrupt for that long, a query whose cancels come one after the
 * other (another session of the same role's, sending them) and are caught, each one pending
 * as the look comes, or one that runs on through routines it calls, each stopped by its own
 * timeout_ms (each stop opens a window of Python unwinding). By the outermost query: one
 * running on, calling routines whose queries come and go, stays the suspect (a red team's
 * did). When it was first found running on and first found HELD (0: not yet), and which
 * stop the first look was for (looks for a deadline and for a cancel request alternate).
 */
#define CONFIRM 0.25
#define CAUGHT_HINT "A query that catches query_canceled (a PL/pgSQL handler) cannot be " \
	"stopped any other way; see \"Stopping routines\" in pyfuncs' README."
static struct
{
	unsigned long query;
	double		since;
	double		pending_since;
	int			why;
	unsigned long aborts;		/* `aborts` at the last look */
}			suspect;
/* subtransactions aborted inside routines' queries: an error on its way up through blocks */
static volatile unsigned long aborts;
static long queries;
static bool watching_aborts;

#define RESTRICTED (SECURITY_LOCAL_USERID_CHANGE | SECURITY_RESTRICTED_OPERATION)
#define CLAIMS "request.jwt.claims"

static PyObject *
object(int i)
{
	py.incref(objects[i]);
	return objects[i];
}

static const char *
claims_now(void)
{
	return claims_kept != NULL ? *claims_kept : GetConfigOption(CLAIMS, true, false);
}

static PyObject *
text_or_none(const char *text)
{
	return text != NULL ? py.from_text(text) : object(0);
}

/* whether `now` is what `was` (bytes, or None for none) holds: 1, 0, or -1 on error */
static int
same_text(const char *now, PyObject *was)
{
	const char *kept;

	if (was == objects[0])
		return now == NULL;
	if ((kept = py.text_of(was)) == NULL)
		return -1;
	return now != NULL && strcmp(now, kept) == 0;
}

/* a new tuple of `n` (2 to 5) new references, released here; or NULL */
static PyObject *
packed(PySize n, PyObject **items)
{
	PyObject   *tuple = NULL;
	PySize		i;

	for (i = 0; i < n; i++)
		if (items[i] == NULL)
			goto done;
	tuple = n == 2 ? py.tuple_pack(2, items[0], items[1])
		: n == 3 ? py.tuple_pack(3, items[0], items[1], items[2])
		: n == 4 ? py.tuple_pack(4, items[0], items[1], items[2], items[3])
		: py.tuple_pack(5, items[0], items[1], items[2], items[3], items[4]);
done:
	for (i = 0; i < n; i++)
		if (items[i] != NULL)
			py.decref(items[i]);
	return tuple;
}

static void
thrown_through(const char *what)
{
	queries = 0, cancelled_at = 0;
	if (proc_exit_inprogress)	/* (a FATAL error, the session's end: it ends anyway) */
		return;
	ereport(WARNING,
			(errmsg("pyfuncs: %s; this session ends so that no later call runs in a state "
					"left inconsistent", what)));
	ProcDiePending = true;		/* as pg_terminate_backend: at the next interrupt check */
	InterruptPending = true;
}

static PyObject *
guard_enter(PyObject *self, PyObject *unused)
{
	Oid			user;
	int			context,
				open;
	PyObject   *level,
			   *items[4],
			   *entered;

	GetUserIdAndSecContext(&user, &context);
	if ((level = py.list_item(settings, 0)) == NULL || (open = py.is_true(level)) < 0)
		return NULL;
	items[0] = py.from_unsigned(user);
	items[1] = py.from_long(context);
	if (!open)
	{
		items[2] = text_or_none(namespace_search_path);
		items[3] = text_or_none(claims_now());
	}
	if ((entered = packed(open ? 2 : 4, items)) == NULL)
		return NULL;
	if (!open)
	{
		/* (a level is a small int, which Python does not allocate) */
		if ((level = py.from_long(NewGUCNestLevel())) == NULL)
		{
			py.decref(entered);
			return NULL;
		}
		py.list_set(settings, 0, level);
		py.incref(entered);
		py.list_set(settings, 1, entered);
	}
	SetUserIdAndSecContext(user, context | RESTRICTED);
	if (queries < MAX_LENT)
	{
		began_in[queries] = GetCurrentSubTransactionId();
		its_own[queries] = InvalidSubTransactionId;
		failed[queries] = false;
	}
	if (queries++ == 0)
	{
		outermost++;
		outermost_began = lent_at > 0 ? lent_at : now();
		error_quiet = ErrorContext->mem_allocated;
	}
	lent_at = 0;
	return entered;
}

static PyObject *
guard_leave(PyObject *self, PyObject *entered)
{
	PyObject   *item,
			   *call;
	unsigned long user;
	long		context;
	int			same;

	/* the query ends in the subtransaction it began in: else PL/Python ended another in
	 * place of its own (a savepoint begun inside the query, by code of the routine's that
	 * PostgreSQL called there), and PostgreSQL's subtransactions and its resource owners
	 * are out of step */
	if (queries > 0)
	{
		/* the query a cancel request came in has returned: the query around it, if any, is
		 * the one that goes on past it (a red team's caught the nested routine's error and
		 * ran on for ever) */
		if (--queries < cancelled_depth)
		{
			if (queries == 0)
				cancelled_at = 0;
			else
				cancelled_depth = queries;
		}
		if (queries < MAX_LENT && GetCurrentSubTransactionId() != began_in[queries])
			thrown_through("a routine's query ended in another subtransaction than it began in");
	}
	if ((item = py.tuple_item(entered, 0)) == NULL)
		return NULL;
	user = py.as_unsigned(item);
	if ((item = py.tuple_item(entered, 1)) == NULL)
		return NULL;
	context = py.as_long(item);
	if (py.error() != NULL)
		return NULL;
	SetUserIdAndSecContext((Oid) user, (int) context);
	if ((call = py.list_item(settings, 1)) == NULL || (item = py.tuple_item(call, 0)) == NULL)
		return NULL;
	if (py.as_unsigned(item) != user)
		return py.error() != NULL ? NULL : object(3);
	if ((item = py.tuple_item(call, 2)) == NULL || (same = same_text(namespace_search_path, item)) < 0)
		return NULL;
	if (!same)
		return object(4);
	if ((item = py.tuple_item(call, 3)) == NULL || (same = same_text(claims_now(), item)) < 0)
		return NULL;
	return object(same ? 0 : 5);
}

/* the milliseconds until `at` (seconds of CLOCK_MONOTONIC), rounded up: a timer set to go
 * off then never goes off before it (one past it goes off at once) */
static int
ms_until(double at, double t)
{
	double		left = at - t;

	return left <= 0 ? 0 : left * 1000 >= INT_MAX - 1 ? INT_MAX : (int) (left * 1000) + 1;
}

/* the timer set to go off at `deadline`, `t` being now */
static void
arm(double deadline, double t)
{
	enable_timeout_after((TimeoutId) timer, ms_until(deadline, t));
}

/* what die() does (in a signal handler), and why */
static void
end_session(int why)
{
	killed = why;
	ProcDiePending = true;
	InterruptPending = true;
	SetLatch(MyLatch);
}

/*
 * What a look finds of a query given its stop. ENDING: the query's own subtransaction has
 * aborted (`failed`): its error is on its way out. HELD: it has not seen its stop, or cannot
 * yet: the cancel is still pending (C code that has not reached an interrupt check: a red
 * team's numeric division of 2 s), PostgreSQL's code holds interrupts off beyond the asking
 * signal handler's own holds (`own`: an abort under way; round 73 made one of a block inside
 * the query take 2 s), or a routine's Python unwinds from a stop the watchdog raised during
 * the outermost query (for up to UNWIND: round 69 found the first version ending such a
 * session), or a subtransaction inside the query aborted since the last look (`aborting`:
 * an error on its way up through blocks, which PL/pgSQL copies at each: round 74 made one
 * take 4.7 s through 250), or an error is being made (ErrorContext holds more than as the
 * outermost query began: the same red team's took seconds to make its context of 25 MB).
 * RUNS_ON: none of these, past its stop.
 */
typedef enum
{
	RUNS_ON,
	HELD,
	ENDING,
}			Found;

static Found
found(double t, uint32 own, bool aborting)
{
	double		raised = pyfuncs_backstop_clock[2];

	if (queries > 0 && failed[(queries < MAX_LENT ? queries : MAX_LENT) - 1])
		return ENDING;
	if (QueryCancelPending || InterruptHoldoffCount > own || aborting
		|| ErrorContext->mem_allocated > error_quiet
		|| (raised >= outermost_began && t - raised < unwind))
		return HELD;
	return RUNS_ON;
}

static void look_after(double after);

/* whether the suspect is the outermost query under way */
static bool
suspected(void)
{
	return queries > 0 && suspect.query == outermost;
}

/* (in a signal handler, which holds interrupts off `own` times: PostgreSQL's SIGALRM
 * handler does, once) the outermost query, given its stop `why` GRACE ago or more (1: a
 * deadline, 2: a cancel request), looked at: the session ends where it runs on and was
 * found so CONFIRM ago, or is HELD and was found so UNWIND ago; the next look is set */
static void
judge(double t, int why, uint32 own)
{
	Found		now_found;
	unsigned long aborted = aborts;

	if (!suspected())
	{
		/* (the query last: the other handler, coming in between, takes it for another) */
		suspect.since = suspect.pending_since = 0;
		suspect.why = why;
		suspect.aborts = aborted;
		suspect.query = outermost;
	}
	now_found = found(t, own, aborted != suspect.aborts);
	suspect.aborts = aborted;
	if (now_found != RUNS_ON)
	{
		if (now_found == HELD && !suspect.pending_since)
			suspect.pending_since = t;
		else if (now_found == HELD && t - suspect.pending_since >= unwind)
			end_session(3);
		look_after(suspect.since ? CONFIRM : grace);
		return;
	}
	if (!suspect.since)
		suspect.since = t;
	else if (t - suspect.since >= CONFIRM)
	{
		if (suspect.why == 2)
			cancelled_at = 0;
		end_session(suspect.why);
	}
	look_after(CONFIRM);
}

/* the killer's handler (in PostgreSQL's SIGALRM handler; it goes off every GRACE) */
static void
on_ran_on(void)
{
	if (queries > 0)
		judge(now(), 1, 1);
}

/* the cancel request's timer set to go off `after` seconds from now */
static void
look_after(double after)
{
	struct itimerspec when = {{0, 0}, {(time_t) after, (long) ((after - (time_t) after) * 1e9)}};

	timer_settime(cancel_timer, 0, &when, NULL);
}

static void
on_cancel(int signo, siginfo_t *info, void *context)
{
	int			saved_errno = errno;

	/* (statement_timeout and lock_timeout send it too: the first has the killer, and a
	 * query may catch the second and try again, as PostgreSQL means it to) */
	if (queries > 0 && !cancelled_at && cancel_timer_made
		&& !get_timeout_indicator(STATEMENT_TIMEOUT, false)
		&& !get_timeout_indicator(LOCK_TIMEOUT, false))
	{
		cancelled_depth = queries;
		cancelled_at = now();
		look_after(grace + 0.01);	/* (a little after GRACE: watch looks then) */
	}
	errno = saved_errno;
	chain(&chained_cancel, signo, info, context);
}

/* (in watch) the query a cancel request came in is still under way GRACE after it, or the
 * killer's is CONFIRM after it was first seen running on */
static void
ran_on_after_stop(double t)
{
	if (cancelled_at && t - cancelled_at >= grace && queries >= cancelled_depth)
		judge(t, 2, 0);
	else if (suspect.since && suspected())
		judge(t, suspect.why, 0);
}

/* the FATAL error of a session the killer ended says so, to the client and in the log:
 * its message and hint, for each value of `killed` */
static const char *const ended[3][2] = {
	{"pyfuncs: a routine's query ran on for a second after its timeout_ms or statement_timeout "
		"stopped it: it caught the cancel itself; the session ends",
	CAUGHT_HINT},
	{"pyfuncs: a routine's query ran on for a second after a cancel request stopped it: it "
		"caught the cancel itself; the session ends",
	CAUGHT_HINT},
	{"pyfuncs: a routine's query did not see its stop for ten seconds (C code that checks for "
		"no interrupt, cancels that keep coming, each caught, or Python unwinding that long); "
		"the session ends",
		"A query that does not see its stop for that long cannot be stopped any other way; see "
	"\"Stopping routines\" in pyfuncs' README."},
};

static void
explain(ErrorData *edata)
{
	if (killed && edata->elevel == FATAL && edata->sqlerrcode == ERRCODE_ADMIN_SHUTDOWN)
	{
		edata->sqlerrcode = ERRCODE_QUERY_CANCELED;
		edata->message = MemoryContextStrdup(ErrorContext, ended[killed - 1][0]);
		edata->hint = MemoryContextStrdup(ErrorContext, ended[killed - 1][1]);
		killed = 0;
	}
	if (prior_emit_log_hook)
		prior_emit_log_hook(edata);
}

/* the killer set to go off GRACE after `first` (PostgreSQL's time), then every GRACE */
static void
killer_after(TimestampTz first)
{
	int			every = Max(1, (int) (grace * 1000));

	enable_timeout_every((TimeoutId) killer, TimestampTzPlusMilliseconds(first, every), every);
}

/* the killer set to go off at `at` (seconds of CLOCK_MONOTONIC), then every GRACE */
static void
arm_killer(double at)
{
	enable_timeout_every((TimeoutId) killer,
						 TimestampTzPlusMilliseconds(GetCurrentTimestamp(), ms_until(at, now())),
						 Max(1, (int) (grace * 1000)));
}

/* when a query lent at `t` ends the session unless it has returned: GRACE after the first of
 * the call's deadline and statement_timeout (0: never) */
static double
end_of(double deadline, TimestampTz due, double t)
{
	double		first = deadline;

	if (due != 0)
	{
		double		statement = t + (due - GetCurrentTimestamp()) / 1e6;

		if (first <= 0 || statement < first)
			first = statement;
	}
	return first > 0 ? first + grace : 0;
}

/*
 * Before a query: True where give_back must follow (a call under way has a deadline, or the
 * statement a timeout), False where nothing is watched, None where the query may not run:
 * in a parallel operation (PL/Python begins a subtransaction for each query, which
 * PostgreSQL refuses there with an error thrown through the interpreter's frames), or
 * nested deeper than the deadlines kept.
 */
static PyObject *
guard_lend(PyObject *self, PyObject *unused)
{
	double		deadline = timer < 0 ? 0 : pyfuncs_backstop_clock[0],
				armed = lent > 0 ? deadlines[lent - 1] : 0;
	TimestampTz due,
				armed_at = 0;	/* the timer's, where this query sets it */
	double		t;

	if (IsInParallelMode() || lent >= MAX_LENT)
		return object(0);
	t = lent_at = now();		/* (one clock read for the query: enter's too) */
	due = get_timeout_active(STATEMENT_TIMEOUT) ? get_timeout_finish_time(STATEMENT_TIMEOUT) : 0;
	/* the first deadline, or one of a routine called inside a query whose comes first */
	if (deadline > 0 && (armed <= 0 || deadline < armed))
	{
		armed = deadline;
		arm(armed, t);
		armed_at = get_timeout_finish_time((TimeoutId) timer);
	}
	if (lent == 0 && armed <= 0 && due == 0)
		return object(2);
	ends[lent] = killer < 0 ? 0 : end_of(armed, due, t);
	/* (from the timer's time and statement_timeout's, where they are known: no clock read;
	 * not from a deadline already passed, for which the timer is set to now) */
	if (ends[lent] > 0 && armed_at != 0 && armed > t && (due == 0 || armed_at <= due))
		killer_after(armed_at);
	else if (ends[lent] > 0 && armed <= 0)
		killer_after(due);
	else if (ends[lent] > 0)
		arm_killer(ends[lent]);
	deadlines[lent] = armed;
	statement_due[lent++] = due;
	return object(1);
}

/*
 * After the query: whether it went on past a stop it caught (a handler for query_canceled in
 * a DO block it ran): True where the timer went off while it ran (the call is past its
 * deadline), 2 where statement_timeout's did (PostgreSQL resets that one's indicator as it
 * cancels: its timer is off, and was due), else False.
 */
static PyObject *
guard_give_back(PyObject *self, PyObject *unused)
{
	double		inner;
	TimestampTz due;
	bool		fired = false;
	DisableTimeoutParams off[2];
	int			n = 0;

	if (lent == 0)
		return object(2);
	inner = deadlines[--lent];
	due = statement_due[lent];
	if (killer >= 0 && ends[lent] > 0)
	{
		if (lent > 0 && ends[lent - 1] > 0)
			arm_killer(ends[lent - 1]);
		else
			off[n++] = (DisableTimeoutParams) {(TimeoutId) killer, false};
	}
	if (timer >= 0 && (lent == 0 || deadlines[lent - 1] <= 0))
		off[n++] = (DisableTimeoutParams) {(TimeoutId) timer, true};
	if (n > 0)					/* (together: PostgreSQL reads the clock once, if at all) */
		disable_timeouts(off, n);
	if (timer >= 0)
	{
		/* a deadline that came as the query finished, too late for it, leaves no cancel
		 * behind for what runs next (the caller stops the call for it) */
		fired = get_timeout_indicator((TimeoutId) timer, true);
		if (fired && QueryCancelPending)
			QueryCancelPending = false;
		/* the query around this one's deadline, where this one's came first */
		if (lent > 0 && deadlines[lent - 1] > 0 && deadlines[lent - 1] > inner)
			arm(deadlines[lent - 1], now());
	}
	if (fired)
		return object(1);
	if (due != 0 && !get_timeout_active(STATEMENT_TIMEOUT) && GetCurrentTimestamp() >= due)
		return py.from_long(2);
	return object(2);
}

static PyObject *
guard_lent(PyObject *self, PyObject *unused)
{
	return py.from_long(lent);
}

/* whether each query under way (by enter's count) lent the timer: begin to end */
static bool lent_by[MAX_LENT];

static PyObject *
guard_begin(PyObject *self, PyObject *unused)
{
	PyObject   *lending,
			   *entered;
	bool		lends;

	if (queries >= MAX_LENT)
		return object(0);
	if ((lending = guard_lend(self, NULL)) == NULL)
		return NULL;
	py.decref(lending);			/* (one of `objects`, which the caller keeps) */
	if (lending == objects[0])
		return object(0);
	lends = lending == objects[1];
	if ((entered = guard_enter(self, NULL)) == NULL)
	{
		if (lends && (lending = guard_give_back(self, NULL)) != NULL)
			py.decref(lending);
		return NULL;
	}
	lent_by[queries - 1] = lends;
	return entered;
}

static PyObject *
guard_end(PyObject *self, PyObject *entered)
{
	PyObject   *fired = NULL,
			   *changed;
	bool		lends = queries > 0 && queries <= MAX_LENT && lent_by[queries - 1];

	if (lends && (fired = guard_give_back(self, NULL)) == NULL)
	{
		/* (left even so: Python's error stands) */
		if ((changed = guard_leave(self, entered)) != NULL)
			py.decref(changed);
		return NULL;
	}
	changed = guard_leave(self, entered);
	if (changed == NULL || changed != objects[0])
	{
		if (fired != NULL)
			py.decref(fired);
		return changed;
	}
	py.decref(changed);
	if (fired == NULL || fired == objects[2])
	{
		if (fired != NULL)
			py.decref(fired);
		return object(0);
	}
	return fired;
}

static PyObject *
guard_undo(PyObject *self, PyObject *level)
{
	long		nest = py.as_long(level);

	if (py.error() != NULL)
		return NULL;
	AtEOXact_GUC(false, (int) nest);
	return object(0);
}

static MethodDef guards[] = {
	{"enter", guard_enter, METH_NOARGS, NULL},
	{"leave", guard_leave, METH_O, NULL},
	{"lend", guard_lend, METH_NOARGS, NULL},
	{"give_back", guard_give_back, METH_NOARGS, NULL},
	{"lent", guard_lent, METH_NOARGS, NULL},
	{"begin", guard_begin, METH_NOARGS, NULL},
	{"end", guard_end, METH_O, NULL},
	{"undo", guard_undo, METH_O, NULL},
};

static void
on_subtransaction(SubXactEvent event, SubTransactionId sub, SubTransactionId parent,
				  void *unused)
{
	long		innermost = (queries < MAX_LENT ? queries : MAX_LENT) - 1;

	if (queries <= 0)
		return;
	if (event == SUBXACT_EVENT_ABORT_SUB)
		aborts++;
	if (event == SUBXACT_EVENT_ABORT_SUB && began_in[innermost] >= sub)
		thrown_through("an error went through a routine's Python");
	else if (event == SUBXACT_EVENT_COMMIT_SUB && began_in[innermost] >= sub)
		thrown_through("a subtransaction under way as a routine's query began ended inside it");
	else if (event == SUBXACT_EVENT_ABORT_SUB && sub == its_own[innermost])
		failed[innermost] = true;
	else if (event == SUBXACT_EVENT_START_SUB && parent == began_in[innermost])
	{
		if (its_own[innermost] != InvalidSubTransactionId)
			thrown_through("a routine's query began a second subtransaction: code inside it "
						   "ended the query's own");
		else
			its_own[innermost] = sub;
	}
}

static void
on_transaction(XactEvent event, void *unused)
{
	if (queries > 0 && (event == XACT_EVENT_ABORT || event == XACT_EVENT_PARALLEL_ABORT))
		thrown_through("an error went through a routine's Python");
	else if (event == XACT_EVENT_COMMIT || event == XACT_EVENT_PREPARE)
		queries = 0, cancelled_at = 0;
}

/*
 * Python's functions (GuardApi's, in its order), identity.SETTINGS, None, True, False and
 * the three names leave answers (`constants`), the claims' storage (or NULL) and the
 * runtime's timer (-1: none), all kept alive by the caller: the first five functions
 * above, as a tuple, or NULL with Python's error set.
 */
PyObject   *
pyfuncs_query_guards(const GuardApi *functions, PyObject *settings_list,
					 PyObject *const *constants, char **claims_storage, int timer_id)
{
	PyObject   *made[5];
	int			i;

	py = *functions;
	settings = settings_list;
	for (i = 0; i < 6; i++)
		objects[i] = constants[i];
	claims_kept = claims_storage;
	timer = timer_id;
	if (timer >= 0 && killer < 0)
	{
		struct sigevent event = {0};
		struct sigaction action;

		killer = RegisterTimeout(USER_TIMEOUT, on_ran_on);
		prior_emit_log_hook = emit_log_hook;
		emit_log_hook = explain;
		event.sigev_notify = SIGEV_SIGNAL;
		event.sigev_signo = SIGPROF;
		if (timer_create(CLOCK_MONOTONIC, &event, &cancel_timer) == 0
			&& sigaction(SIGINT, NULL, &chained_cancel) == 0)
		{
			cancel_timer_made = true;
			action = chained_cancel;
			action.sa_sigaction = on_cancel;
			action.sa_flags = chained_cancel.sa_flags | SA_SIGINFO;
			sigaction(SIGINT, &action, NULL);
		}
	}
	if (!watching_aborts)
	{
		RegisterXactCallback(on_transaction, NULL);
		RegisterSubXactCallback(on_subtransaction, NULL);
		watching_aborts = true;
	}
	for (i = 0; i < 5; i++)
		made[i] = py.function_new(&guards[i], NULL, NULL);
	return packed(5, made);
}

/*
 * After pyfuncs_query_guards (which a runtime from before them calls alone, and which stays
 * as it was for it): begin, end and undo, as a tuple, or NULL with Python's error set.
 */
PyObject   *
pyfuncs_query_guards_joined(void)
{
	PyObject   *made[3];
	int			i;

	for (i = 0; i < 3; i++)
		made[i] = py.function_new(&guards[5 + i], NULL, NULL);
	return packed(3, made);
}

/*
 * The backend's local transaction id (MyProc->lxid), which tells one transaction from the
 * next (db.py's savepoints: the transactions of one simple-query message all start at its
 * timestamp, and subtransaction ids start again at 1 in each).
 */
uint32
pyfuncs_local_transaction(void)
{
	return MyProc != NULL ? MyProc->lxid : 0;
}

/*
 * The watchdog's handler, with frames lent to it (watchdog.py). Python calls a signal's
 * handler in the main thread, between two bytecodes of whatever runs there, and a call of
 * Python code takes a frame under the recursion limit: a routine that recursed to the
 * limit and looped there without calls got a RecursionError from each tick in the
 * handler's place, caught it, and was never looked at (its max_memory_mb unread, its stops
 * left to the handler above; red team round 62). Python calls a handler that is an object
 * of this type by its vectorcall, which no check of the limit precedes: it raises the limit
 * by `frames` for the handler's call and gives back the one there was as the call returns,
 * at the depth where it began (unless the handler set another). The frames are lent to the
 * handler alone: a first fix raised the limit in the C handler for SIGPROF, which lent them
 * to whatever ran until Python called the watchdog's (C recursion of a routine's ran into
 * them, and the count of frames left, set back after, aborted the process; round 63).
 */
typedef PyObject *(*Vectorcall) (PyObject *callable, PyObject *const *args, size_t nargsf,
								 PyObject *kwnames);
typedef struct
{
	PyObject   *(*type_from_spec) (void *spec);
	PyObject   *(*generic_alloc) (PyObject *type, PySize items);
	PyObject   *(*vectorcall_call) (PyObject *callable, PyObject *args, PyObject *kwargs);
	PyObject   *(*vectorcall) (PyObject *callable, PyObject *const *args, size_t nargsf,
							   PyObject *kwnames);
	int			(*get_limit) (void);
	void		(*set_limit) (int limit);
	void		(*incref) (PyObject *object);
}			LendApi;

typedef struct
{
	PySize		refcount;
	PyObject   *type;
	Vectorcall	call;			/* where tp_vectorcall_offset points */
	PyObject   *handler;
	int			frames;
}			Lender;

typedef struct
{
	int			slot;
	void	   *function;
}			TypeSlot;					/* PyType_Slot */

typedef struct
{
	const char *name;
	int			basicsize;
	int			itemsize;
	unsigned int flags;
	TypeSlot   *slots;
}			TypeSpec;					/* PyType_Spec */

typedef struct
{
	const char *name;
	int			type;
	PySize		offset;
	int			flags;
	const char *doc;
}			MemberDef;					/* PyMemberDef */

static LendApi lending;
static PyObject *lender_type;

static PyObject *
lend(PyObject *self, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
	Lender	   *lender = (Lender *) self;
	int			limit = lending.get_limit();
	PyObject   *result;

	lending.set_limit(limit + lender->frames);
	result = lending.vectorcall(lender->handler, args, nargsf, kwnames);
	if (lending.get_limit() == limit + lender->frames)
		lending.set_limit(limit);
	return result;
}

/*
 * Python's functions (LendApi's, in its order) and `handler`, kept alive by the caller: a
 * callable that calls `handler` with `frames` lent, or NULL with Python's error set.
 */
PyObject   *
pyfuncs_frames_lent(const LendApi *functions, PyObject *handler, int frames)
{
	static MemberDef members[] = {
		{"__vectorcalloffset__", 19 /* T_PYSSIZET */ , offsetof(Lender, call), 1 /* READONLY */ , NULL},
		{NULL, 0, 0, 0, NULL},
	};
	static TypeSlot slots[] = {
		{50 /* Py_tp_call */ , NULL},
		{72 /* Py_tp_members */ , members},
		{0, NULL},
	};
	static TypeSpec spec = {
		"pyfuncs.lender", sizeof(Lender), 0,
		/* Py_TPFLAGS_DEFAULT | HAVE_VECTORCALL | IMMUTABLETYPE | DISALLOW_INSTANTIATION */
		(1U << 18) | (1U << 11) | (1U << 8) | (1U << 7), slots,
	};
	Lender	   *lender;

	lending = *functions;
	if (lender_type == NULL)
	{
		slots[0].function = (void *) lending.vectorcall_call;
		if ((lender_type = lending.type_from_spec(&spec)) == NULL)
			return NULL;
	}
	if ((lender = (Lender *) lending.generic_alloc(lender_type, 0)) == NULL)
		return NULL;
	lending.incref(handler);
	lender->handler = handler;
	lender->frames = frames;
	lender->call = lend;
	return (PyObject *) lender;
}
