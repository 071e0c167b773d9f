@echo off
rem Windows: virtual environment, install, migrate, then serve with waitress
rem (gunicorn does not run on Windows) on %HOST%:%PORT%, 127.0.0.1:5000 by default.
cd /d "%~dp0"
if not exist .venv\Scripts\python.exe (python -m venv .venv || exit /b 1)
.venv\Scripts\python -m pip install --quiet -r requirements.txt || exit /b 1
.venv\Scripts\python manage.py migrate --noinput || exit /b 1
.venv\Scripts\python manage.py rebuild_analytics --if-needed --quiet-progress || exit /b 1
.venv\Scripts\python manage.py collectstatic --noinput --verbosity 0 || exit /b 1
if "%PORT%"=="" set PORT=5000
if "%HOST%"=="" set HOST=127.0.0.1
rem The folder folds stored events into conversations, rollups and the Prometheus totals.
echo Starting the folder
start "mlops folder" /b .venv\Scripts\python manage.py fold_events
echo Serving on http://%HOST%:%PORT%/ (admin at /admin/)
.venv\Scripts\waitress-serve --listen=%HOST%:%PORT% mlops_site.wsgi:application
